"""Attachments in the database: their metadata and links to messages (a repository of the unit of work), and
their bytes (`DatabaseAttachmentStore`, the default `ports.AttachmentStore`)."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from datetime import UTC
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from service.domain import Attachment
from service.storage.tables import attachment_chunks, attachments, conversation_shares, message_attachments, messages

if TYPE_CHECKING:
    from service.storage.database import Database

# Rows of the store: a size every database stores and sends comfortably (Postgres bytea, SQLite blob).
CHUNK_BYTES = 256 * 1024


# Read on every reply start (the files its history carries): built once, its cache key and SQL reused.
_LINKED = (
    sa.select(message_attachments.c.message_id, *attachments.c)
    .join_from(message_attachments, attachments, attachments.c.id == message_attachments.c.attachment_id)
    .where(message_attachments.c.message_id.in_(sa.bindparam("b_ids", expanding=True)))
    .order_by(message_attachments.c.message_id, message_attachments.c.position)
)


class SqlAttachments:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def add(self, attachment: Attachment) -> None:
        a = attachment
        await self._conn.execute(
            attachments.insert().values(
                id=a.id,
                owner=a.owner,
                filename=a.filename,
                content_type=a.content_type,
                sniffed_content_type=a.sniffed_content_type,
                size_bytes=a.size_bytes,
                sha256=a.sha256,
                create_time=a.create_time,
            )
        )

    async def get(self, attachment_id: str) -> Attachment | None:
        row = (await self._conn.execute(attachments.select().where(attachments.c.id == attachment_id))).first()
        return _attachment(row) if row else None

    async def get_many(self, attachment_ids: Sequence[str]) -> Mapping[str, Attachment]:
        if not attachment_ids:
            return {}
        rows = await self._conn.execute(attachments.select().where(attachments.c.id.in_(attachment_ids)))
        return {row.id: _attachment(row) for row in rows}

    async def delete(self, attachment_id: str) -> None:
        # The links first: explicit, whether or not the database enforces the foreign key's cascade.
        await self._conn.execute(
            message_attachments.delete().where(message_attachments.c.attachment_id == attachment_id)
        )
        await self._conn.execute(attachments.delete().where(attachments.c.id == attachment_id))

    async def link(self, message_id: str, attachment_ids: Sequence[str]) -> None:
        if attachment_ids:
            rows = [
                {"message_id": message_id, "position": position, "attachment_id": attachment_id}
                for position, attachment_id in enumerate(attachment_ids)
            ]
            await self._conn.execute(message_attachments.insert(), rows)

    async def linked(self, message_ids: Sequence[str]) -> Mapping[str, tuple[Attachment, ...]]:
        if not message_ids:
            return {}
        found: dict[str, list[Attachment]] = {}
        for row in await self._conn.execute(_LINKED, {"b_ids": list(message_ids)}):
            found.setdefault(row.message_id, []).append(_attachment(row))
        return {message_id: tuple(items) for message_id, items in found.items()}

    async def shared_with(self, attachment_id: str, user_id: str) -> bool:
        links, shares = message_attachments.c, conversation_shares.c
        query = (
            sa.select(sa.literal(1))
            .select_from(message_attachments)
            .join(messages, messages.c.id == links.message_id)
            .join(conversation_shares, shares.conversation_id == messages.c.conversation_id)
            .where(links.attachment_id == attachment_id, shares.user_id == user_id)
            .limit(1)
        )
        return (await self._conn.execute(query)).first() is not None


class DatabaseAttachmentStore:
    """Implements `ports.AttachmentStore` in the database: each attachment's bytes as rows of `CHUNK_BYTES`, written
    in one transaction, read one chunk per short transaction (a slow download holds no connection)."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def put(self, key: str, chunks: AsyncIterable[bytes]) -> None:
        async with self._database.connection() as conn:
            await conn.begin()
            seq = 0
            async for data in _rechunked(chunks):
                await conn.execute(attachment_chunks.insert().values(key=key, seq=seq, data=data))
                seq += 1
            await conn.commit()

    async def get(self, key: str) -> AsyncIterator[bytes]:
        c = attachment_chunks.c
        seq = 0
        while True:
            async with self._database.connection() as conn:
                data = (await conn.execute(sa.select(c.data).where(c.key == key, c.seq == seq))).scalar()
            if data is None:
                return
            yield bytes(data)
            seq += 1

    async def delete(self, key: str) -> None:
        async with self._database.connection() as conn:
            await conn.begin()
            await conn.execute(attachment_chunks.delete().where(attachment_chunks.c.key == key))
            await conn.commit()


async def _rechunked(chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """The bytes of `chunks` as pieces of CHUNK_BYTES (the last one shorter), whatever sizes they came in."""
    pending = bytearray()
    async for chunk in chunks:
        pending += chunk
        while len(pending) >= CHUNK_BYTES:
            yield bytes(pending[:CHUNK_BYTES])
            del pending[:CHUNK_BYTES]
    if pending:
        yield bytes(pending)


def _attachment(row: Any) -> Attachment:
    created = row.create_time
    return Attachment(
        id=row.id,
        owner=row.owner,
        filename=row.filename,
        content_type=row.content_type,
        sniffed_content_type=row.sniffed_content_type,
        size_bytes=int(row.size_bytes),
        sha256=row.sha256,
        create_time=created if created.tzinfo else created.replace(tzinfo=UTC),
    )
