"""Migration 0010_message_tree on SQLite and Postgres: existing conversations come into the tree unchanged (each
message after the one before it, the last one current), messages written by the release before (which knows no
tree) go on the end of the current branch, and the migration is reversible."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from alembic import command
from sqlalchemy.ext.asyncio import create_async_engine

from service.storage.database import Database
from service.storage.migrate import alembic_config
from service.storage.tables import conversations, messages

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
LONG = "0b6f8a1e-3c1d-4f3e-9a57-2d0c1b9e8f21"
SHORT = "1c7f9b2f-4d2e-4f4f-8b68-3e1d2caf9032"
EMPTY = "2d8fac30-5e3f-4a5a-9c79-4f2e3dbf0143"
BEFORE = "0010_message_tree-1"  # the revision before this one, wherever the chain puts it


def _id(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def _message(n: int, conversation_id: str, content: str, **values: Any) -> dict[str, Any]:
    return {
        "id": _id(n),
        "conversation_id": conversation_id,
        "owner": "alice",
        "role": "user" if n % 2 else "assistant",
        "content": content,
        "status": "completed",
        "create_time": NOW + timedelta(seconds=n),
        "update_time": NOW + timedelta(seconds=n),
        **values,
    }


async def _execute(url: str, statement: Any, rows: list[dict[str, Any]] | None = None) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(statement, rows) if rows else await conn.execute(statement)
    finally:
        await engine.dispose()


async def _columns(url: str, table: str) -> set[str]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(lambda sync: {c["name"] for c in sa.inspect(sync).get_columns(table)})
    finally:
        await engine.dispose()


async def test_existing_conversations_become_one_branch_each(database_url: str) -> None:
    config = alembic_config(database_url)
    await asyncio.to_thread(command.downgrade, config, BEFORE)
    assert "parent_id" not in await _columns(database_url, "messages")
    await _execute(
        database_url,
        conversations.insert(),
        [
            {"id": cid, "owner": "alice", "title": "Old", "model": "m", "create_time": NOW, "update_time": NOW}
            for cid in (LONG, SHORT, EMPTY)
        ],
    )
    # Interleaved across conversations, as the release before wrote them (one conversation's `seq`s have gaps).
    await _execute(
        database_url,
        messages.insert(),
        [
            _message(1, LONG, "a narwhal?"),
            _message(2, LONG, "a whale"),
            _message(3, SHORT, "hello"),
            _message(5, LONG, "its tusk?"),
            _message(6, LONG, "a tooth"),
            _message(4, SHORT, "hi"),
        ],
    )

    await asyncio.to_thread(command.upgrade, config, "head")

    database = Database(database_url)
    try:
        async with database.unit_of_work() as uow:
            long, short, empty = [await uow.conversations.get(cid) for cid in (LONG, SHORT, EMPTY)]
            assert long is not None and short is not None and empty is not None
            assert (long.current_message_id, short.current_message_id, empty.current_message_id) == (_id(6), _id(4), "")
            listed = await uow.messages.list_branch(LONG, long.current_message_id, limit=10, after=None)
            assert [m.content for m in listed.items] == ["a narwhal?", "a whale", "its tusk?", "a tooth"]
            assert [m.parent_id for m in listed.items] == ["", _id(1), _id(2), _id(5)]
            assert all(m.siblings is not None and m.siblings.count == 1 for m in listed.items)
            assert [m.parent_id for m in await uow.messages.branch(SHORT, _id(4), limit=10)] == ["", _id(3)]
            hits = await uow.messages.search("alice", ("narwhal",), limit=10, after=None)
            assert [(h.message.id, h.on_current_branch) for h in hits.items] == [(_id(1), True)]

        # The release before, still serving during a rolling upgrade, adds a question and its reply in one
        # statement without a parent: they go on the end of the current branch, which they end.
        await _execute(database_url, messages.insert(), [_message(7, LONG, "how long?"), _message(8, LONG, "3 m")])
        async with database.unit_of_work() as uow:
            long = await uow.conversations.get(LONG)
            assert long is not None and long.current_message_id == _id(8)
            path = await uow.messages.branch(LONG, _id(8), limit=10)
            assert [m.id for m in path] == [_id(n) for n in (1, 2, 5, 6, 7, 8)]
            # After a branch switch, it follows the branch now current.
            await uow.conversations.set_current(LONG, _id(2), NOW)
            await uow.commit()
        await _execute(database_url, messages.insert(), [_message(9, LONG, "and its teeth?")])
        async with database.unit_of_work() as uow:
            nine = await uow.messages.get(_id(9))
            long = await uow.conversations.get(LONG)
            assert nine is not None and long is not None
            assert (nine.parent_id, long.current_message_id) == (_id(2), _id(9))
            places = await uow.messages.list_siblings(nine, limit=10, after=None)
            assert [m.id for m in places.items] == [_id(5), _id(9)]
    finally:
        await database.dispose()

    await asyncio.to_thread(command.downgrade, config, BEFORE)
    assert "parent_id" not in await _columns(database_url, "messages")
    assert "current_message_id" not in await _columns(database_url, "conversations")
    await _execute(database_url, messages.insert(), [_message(11, LONG, "no tree here")])  # no trigger left behind
    await asyncio.to_thread(command.upgrade, config, "head")  # the session's database stays at head
