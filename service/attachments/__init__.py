"""Attachment use cases: upload (client-streamed, size-limited, declared and sniffed type, sha256), metadata,
download and delete; and the rules for the files a user message carries.

An upload is received in full (at most CHAT_MAX_ATTACHMENT_BYTES, refused as soon as it passes them) before
anything is stored, then its bytes go to the store and its metadata to the database, the bytes deleted again if
the metadata cannot be written: an upload that is interrupted (the client cancels, its deadline passes, it is over
the limit, it is refused) leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from service.attachments.media import check_match, declared_type, sniff
from service.domain import (
    PROMPT_IMAGE_TYPES,
    Attachment,
    FailedPrecondition,
    InvalidArgument,
    Message,
    Need,
    NotFound,
    Principal,
    Role,
    attachment_tokens,
    check_access,
    check_id,
    check_shared_access,
    estimate_tokens,
    is_text_type,
    new_id,
    shown,
)
from service.ports import AttachmentStore, UnitOfWork, UnitOfWorkFactory

logger = logging.getLogger(__name__)

FILENAME_MAX = 255
MESSAGE_ATTACHMENTS_MAX = 16


@dataclass(frozen=True, slots=True)
class UploadHeader:
    """The first message of an upload: what the client says the file is."""

    filename: str
    content_type: str = ""  # empty: the sniffed type is taken
    size_bytes: int = 0  # 0: not declared


@dataclass(frozen=True, slots=True)
class Download:
    attachment: Attachment
    chunks: AsyncIterator[bytes]


class Attachments:
    def __init__(
        self, uow: UnitOfWorkFactory, store: AttachmentStore, *, clock: Callable[[], datetime], max_bytes: int
    ) -> None:
        self._uow = uow
        self._store = store
        self._clock = clock
        self._max_bytes = max_bytes

    async def upload(self, principal: Principal, header: UploadHeader, chunks: AsyncIterator[bytes]) -> Attachment:
        """UploadAttachment: receive the file, check it, store it; its metadata as stored."""
        filename = _filename(header.filename)
        declared = declared_type("metadata.content_type", header.content_type)
        if header.size_bytes < 0:
            raise InvalidArgument.field("metadata.size_bytes", "must not be negative")
        if header.size_bytes > self._max_bytes:
            raise self._too_large("metadata.size_bytes")
        data = await self._receive(chunks)
        if header.size_bytes and header.size_bytes != len(data):
            raise InvalidArgument.field(
                "metadata.size_bytes", f"declared {header.size_bytes} bytes, but {len(data)} were sent"
            )
        sniffed = sniff(data)
        check_match(declared, sniffed, data)
        attachment = Attachment(
            id=new_id(),
            owner=principal.user_id,
            filename=filename,
            content_type=declared or sniffed,
            sniffed_content_type=sniffed,
            size_bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            create_time=self._clock(),
        )
        await self._keep(attachment, data)
        return attachment

    async def get(self, principal: Principal, attachment_id: str) -> Attachment:
        """GetAttachment: its owner's, or a viewer's of a conversation with a message that carries it."""
        attachment_id = check_id("attachment_id", attachment_id)
        async with self._uow() as uow:
            return await _readable(uow, principal, attachment_id)

    async def download(self, principal: Principal, attachment_id: str) -> Download:
        """DownloadAttachment: the metadata (access checked as for `get`), and the bytes to stream."""
        attachment = await self.get(principal, attachment_id)
        return Download(attachment, _whole(attachment, self._store.get(attachment.id)))

    async def delete(self, principal: Principal, attachment_id: str) -> None:
        """DeleteAttachment (the owner only): messages that carried it no longer do."""
        attachment_id = check_id("attachment_id", attachment_id)
        async with self._uow() as uow:
            check_access(await uow.attachments.get(attachment_id), principal, "attachment", need=Need.WRITE)
            await uow.attachments.delete(attachment_id)
            await uow.commit()
        await self._discard(attachment_id)

    async def _receive(self, chunks: AsyncIterator[bytes]) -> bytes:
        received = bytearray()
        async for chunk in chunks:
            received += chunk
            if len(received) > self._max_bytes:  # at once: the rest is never read
                raise self._too_large("data")
        if not received:
            raise InvalidArgument.field("data", "is empty: send the file's bytes after the metadata")
        return bytes(received)

    def _too_large(self, field_name: str) -> InvalidArgument:
        return InvalidArgument.field(
            field_name, f"the file is over the limit of {self._max_bytes} bytes (CHAT_MAX_ATTACHMENT_BYTES)"
        )

    async def _keep(self, attachment: Attachment, data: bytes) -> None:
        """The bytes, then the metadata that makes them visible; on any failure (or cancellation) neither."""
        try:
            await self._store.put(attachment.id, _once(data))
            async with self._uow() as uow:
                await uow.attachments.add(attachment)
                await uow.commit()
        except BaseException:
            # Shielded: a cancelled upload still removes what it wrote, even if cancelled again meanwhile.
            await asyncio.shield(self._discard(attachment.id))
            raise

    async def _discard(self, key: str) -> None:
        try:
            await self._store.delete(key)
        except Exception:  # the bytes are unreachable without metadata; an operator may sweep them
            logger.warning("could not delete the bytes of attachment %s", key, exc_info=True)


async def _readable(uow: UnitOfWork, principal: Principal, attachment_id: str) -> Attachment:
    attachment = await uow.attachments.get(attachment_id)
    await check_shared_access(
        attachment,
        principal,
        "attachment",
        need=Need.READ,
        granted=lambda: uow.attachments.shared_with(attachment_id, principal.user_id),
    )
    assert attachment is not None
    return attachment


def _filename(value: str) -> str:
    if not value.strip():
        raise InvalidArgument.field("metadata.filename", "is required")
    if len(value) > FILENAME_MAX:
        raise InvalidArgument.field("metadata.filename", f"must be at most {FILENAME_MAX} characters")
    if not value.isprintable():
        raise InvalidArgument.field("metadata.filename", "must not contain control characters")
    return value


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _whole(attachment: Attachment, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The stored bytes, ending in an error rather than quietly short when the store lost some of them."""
    sent = 0
    async for chunk in chunks:
        sent += len(chunk)
        yield chunk
    if sent != attachment.size_bytes:
        logger.error("attachment %s has %d of its %d bytes in the store", attachment.id, sent, attachment.size_bytes)
        raise NotFound("the attachment's bytes are missing from the attachment store")


# ------------------------------------------------------------------------------------- files of a message


def check_attachment_ids(values: Sequence[str]) -> tuple[str, ...]:
    """The attachment ids of a new message, canonical (no database needed)."""
    if len(values) > MESSAGE_ATTACHMENTS_MAX:
        raise InvalidArgument.field("attachment_ids", f"must hold at most {MESSAGE_ATTACHMENTS_MAX} attachments")
    ids = tuple(check_id(f"attachment_ids[{index}]", value) for index, value in enumerate(values))
    if len(set(ids)) != len(ids):
        raise InvalidArgument.field("attachment_ids", "must not name an attachment twice")
    return ids


async def for_message(
    uow: UnitOfWork,
    principal: Principal,
    attachment_ids: tuple[str, ...],
    *,
    content: str,
    takes_images: bool,
    budget: int,
) -> tuple[Attachment, ...]:
    """The attachments a new user message carries: the caller's own, each an image for a model that takes images
    or a text file, and with the message within the model's context budget (tokens)."""
    if not attachment_ids:
        return ()
    found = await uow.attachments.get_many(attachment_ids)
    for index, attachment_id in enumerate(attachment_ids):
        attachment = found.get(attachment_id)
        check_access(attachment, principal, "attachment", need=Need.WRITE)
        assert attachment is not None
        _check_sendable(attachment, index, takes_images=takes_images)
    files = tuple(found[attachment_id] for attachment_id in attachment_ids)
    cost = estimate_tokens(content) + sum(attachment_tokens(a) for a in files)
    if cost > budget:
        raise InvalidArgument.field(
            "attachment_ids",
            f"the message and its files come to about {cost} tokens; the model's context takes {budget} "
            "(CHAT_HISTORY_TOKEN_BUDGET)",
        )
    return files


def _check_sendable(attachment: Attachment, index: int, *, takes_images: bool) -> None:
    media_type = attachment.content_type
    if media_type in PROMPT_IMAGE_TYPES:
        if not takes_images:
            raise FailedPrecondition(
                f"the model provider does not take images ({shown(attachment.filename)!r} is {media_type})",
                metadata={"attachmentId": attachment.id, "contentType": media_type},
            )
    elif not is_text_type(media_type):
        raise InvalidArgument.field(
            f"attachment_ids[{index}]",
            f"is {media_type}: a message carries images ({', '.join(sorted(PROMPT_IMAGE_TYPES))}) and text files",
        )


async def with_attachment_ids(uow: UnitOfWork, messages: Sequence[Message]) -> list[Message]:
    """`messages` with the ids of the files each user message carries."""
    files = await uow.attachments.linked([m.id for m in messages if m.role is Role.USER])
    carried = {message_id: tuple(a.id for a in found) for message_id, found in files.items()}
    return [
        dataclasses.replace(m, attachment_ids=carried.get(m.id, ())) if m.attachment_ids != carried.get(m.id, ()) else m
        for m in messages
    ]
