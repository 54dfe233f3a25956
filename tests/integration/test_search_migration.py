"""Migration 0002_search on SQLite and Postgres: reversible, and it indexes messages stored before it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from alembic import command
from sqlalchemy.ext.asyncio import create_async_engine

from service.storage.database import Database
from service.storage.migrate import alembic_config
from service.storage.tables import conversations, messages

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
CONVERSATION = "6f1c1a52-5f7c-4a51-9b0e-1f6d3b1f2a11"


async def _store_old_messages(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                conversations.insert().values(
                    id=CONVERSATION, owner="alice", title="Old", model="fake-echo",
                    create_time=NOW, update_time=NOW,
                )
            )  # fmt: skip
            for i, (content, status) in enumerate((("an old pelican story", "completed"), ("pelican", "streaming"))):
                await conn.execute(
                    messages.insert().values(
                        id=f"00000000-0000-4000-8000-00000000000{i}", conversation_id=CONVERSATION,
                        owner="alice", role="user", content=content, status=status, create_time=NOW, update_time=NOW,
                    )
                )  # fmt: skip
    finally:
        await engine.dispose()


async def test_the_search_migration_is_reversible_and_indexes_existing_messages(database_url: str) -> None:
    config = alembic_config(database_url)
    await asyncio.to_thread(command.downgrade, config, "0002_search-1")
    await _store_old_messages(database_url)
    await asyncio.to_thread(command.upgrade, config, "head")

    database = Database(database_url)
    try:
        async with database.unit_of_work() as uow:
            before = await uow.messages.search("alice", ("pelican",), limit=10, after=None)
            # The reply left STREAMING ends INTERRUPTED (as a restart marks it): now it is final, and found.
            await uow.messages.mark_abandoned(now=NOW, status="interrupted", error_message="restart")
            await uow.commit()
        async with database.unit_of_work() as uow:
            after = await uow.messages.search("alice", ("pelican",), limit=10, after=None)
    finally:
        await database.dispose()
    assert [hit.message.content for hit in before.items] == ["an old pelican story"]
    assert sorted(hit.message.content for hit in after.items) == ["an old pelican story", "pelican"]
