"""Migration 0004_usage_estimated on SQLite and Postgres: reversible, keeps the stored replies and the full-text
index, and the migrations build exactly the schema service/storage/tables.py describes."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from service.domain import Usage
from service.storage.database import Database
from service.storage.migrate import alembic_config
from service.storage.tables import conversations, messages, metadata

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
CONVERSATION = "0b6f8a1e-3c1d-4f3e-9a57-2d0c1b9e8f21"
OLD_REPLY = "00000000-0000-4000-8000-0000000000a1"
NEW_REPLY = "00000000-0000-4000-8000-0000000000a2"
BEFORE = "0004_usage_estimated-1"  # the revision before this one, wherever the chain puts it


async def _execute(url: str, *statements: Any) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            for statement in statements:
                await conn.execute(statement)
    finally:
        await engine.dispose()


def _reply(message_id: str, content: str, **values: Any) -> Any:
    return messages.insert().values(
        id=message_id, conversation_id=CONVERSATION, owner="alice", role="assistant", content=content,
        status="completed", prompt_tokens=9, completion_tokens=3, create_time=NOW, update_time=NOW, **values,
    )  # fmt: skip


async def _columns(url: str) -> set[str]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(lambda sync: {c["name"] for c in sa.inspect(sync).get_columns("messages")})
    finally:
        await engine.dispose()


async def test_the_migration_is_reversible_and_keeps_replies_and_search(database_url: str) -> None:
    config = alembic_config(database_url)
    await asyncio.to_thread(command.downgrade, config, BEFORE)
    assert "usage_estimated" not in await _columns(database_url)
    conversation = conversations.insert().values(
        id=CONVERSATION, owner="alice", title="Old", model="default", create_time=NOW, update_time=NOW
    )
    await _execute(database_url, conversation, _reply(OLD_REPLY, "an old narwhal story"))

    await asyncio.to_thread(command.upgrade, config, "head")
    await _execute(database_url, _reply(NEW_REPLY, "a new narwhal story", usage_estimated=True))

    database = Database(database_url)
    try:
        async with database.unit_of_work() as uow:
            old, new = await uow.messages.get(OLD_REPLY), await uow.messages.get(NEW_REPLY)
            hits = await uow.messages.search("alice", ("narwhal",), limit=10, after=None)
    finally:
        await database.dispose()
    assert old is not None and old.usage == Usage(9, 3, estimated=False)  # not recorded before: false
    assert new is not None and new.usage == Usage(9, 3, estimated=True)
    assert sorted(hit.message.id for hit in hits.items) == [OLD_REPLY, NEW_REPLY]  # the index kept up

    await asyncio.to_thread(command.downgrade, config, BEFORE)
    assert "usage_estimated" not in await _columns(database_url)
    await asyncio.to_thread(command.upgrade, config, "head")  # the session's database stays at head


def _search_objects(difference: tuple[Any, ...]) -> bool:
    """The full-text search objects 0002_search creates beside the tables (FTS5 tables, a tsvector column)."""
    text = repr(difference)
    return "messages_fts" in text or "search_vector" in text


async def test_the_migrations_build_the_schema_the_tables_describe(database_url: str) -> None:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            differences = await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync, opts={"compare_type": True}), metadata)
            )
    finally:
        await engine.dispose()

    assert [d for d in differences if not _search_objects(d)] == []
