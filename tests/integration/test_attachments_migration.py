"""Migration 0009_attachments_shares on SQLite and Postgres: it adds the attachment and share tables beside the
stored conversations, which it keeps, and is reversible (the schema as a whole is checked against
service/storage/tables.py by test_usage_migration.py)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import command
from sqlalchemy.ext.asyncio import create_async_engine

from service.domain import Attachment, Share, ShareRole
from service.storage.database import Database
from service.storage.migrate import alembic_config
from service.storage.tables import conversations, messages

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
CONVERSATION = "0b6f8a1e-3c1d-4f3e-9a57-2d0c1b9e8f21"
MESSAGE = "00000000-0000-4000-8000-0000000000b1"
ATTACHMENT = "00000000-0000-4000-8000-0000000000c1"
BEFORE = "0009_attachments_shares-1"  # the revision before this one, wherever the chain puts it
NEW_TABLES = {"attachments", "attachment_chunks", "message_attachments", "conversation_shares"}


async def _tables(url: str) -> set[str]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(lambda sync: set(sa.inspect(sync).get_table_names()))
    finally:
        await engine.dispose()


async def _insert_old_rows(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                conversations.insert().values(
                    id=CONVERSATION, owner="alice", title="Old", model="default", create_time=NOW, update_time=NOW
                )
            )
            await conn.execute(
                messages.insert().values(
                    id=MESSAGE, conversation_id=CONVERSATION, owner="alice", role="user", content="an old question",
                    status="completed", create_time=NOW, update_time=NOW,
                )
            )  # fmt: skip
    finally:
        await engine.dispose()


async def test_the_migration_adds_the_tables_keeps_the_conversations_and_is_reversible(database_url: str) -> None:
    config = alembic_config(database_url)
    await asyncio.to_thread(command.downgrade, config, BEFORE)
    assert not NEW_TABLES & await _tables(database_url)
    await _insert_old_rows(database_url)

    await asyncio.to_thread(command.upgrade, config, "head")

    assert await _tables(database_url) >= NEW_TABLES
    database = Database(database_url)
    try:
        async with database.unit_of_work() as uow:
            attachment = Attachment(ATTACHMENT, "alice", "a.txt", "text/plain", "text/plain", 2, "0" * 64, NOW)
            await uow.attachments.add(attachment)
            await uow.attachments.link(MESSAGE, [ATTACHMENT])
            await uow.shares.add(Share(CONVERSATION, "bob", ShareRole.VIEWER, NOW))
            await uow.commit()
        async with database.unit_of_work() as uow:
            old = await uow.messages.get(MESSAGE)
            linked = await uow.attachments.linked([MESSAGE])
            shared = await uow.attachments.shared_with(ATTACHMENT, "bob")
    finally:
        await database.dispose()
    assert old is not None and old.content == "an old question"
    assert linked == {MESSAGE: (attachment,)} and shared

    await asyncio.to_thread(command.downgrade, config, BEFORE)
    assert not NEW_TABLES & await _tables(database_url)
    await asyncio.to_thread(command.upgrade, config, "head")  # the session's database stays at head
