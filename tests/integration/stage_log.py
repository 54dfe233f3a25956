"""The stored stage history of coaching sessions, recorded by database triggers the test installs.

Every INSERT and UPDATE of a `coaching_sessions` row as committed appends (session, stage, turns) to a log
table, so a test sees each stored position, not only the last one. SQLite and Postgres alike.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

_SQLITE_UP = [
    "CREATE TABLE test_stage_log (id INTEGER PRIMARY KEY AUTOINCREMENT, session_id TEXT, stage TEXT, turns INT)",
    """CREATE TRIGGER test_stage_log_insert AFTER INSERT ON coaching_sessions BEGIN
        INSERT INTO test_stage_log(session_id, stage, turns) VALUES (new.id, new.stage, new.turns_used);
    END""",
    """CREATE TRIGGER test_stage_log_update AFTER UPDATE ON coaching_sessions BEGIN
        INSERT INTO test_stage_log(session_id, stage, turns) VALUES (new.id, new.stage, new.turns_used);
    END""",
]
_SQLITE_DOWN = ["DROP TRIGGER test_stage_log_insert", "DROP TRIGGER test_stage_log_update", "DROP TABLE test_stage_log"]
_POSTGRES_UP = [
    "CREATE TABLE test_stage_log (id bigserial PRIMARY KEY, session_id text, stage text, turns int)",
    """CREATE FUNCTION test_log_stage() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
        INSERT INTO test_stage_log(session_id, stage, turns) VALUES (NEW.id, NEW.stage, NEW.turns_used);
        RETURN NEW;
    END $$""",
    """CREATE TRIGGER test_stage_log AFTER INSERT OR UPDATE ON coaching_sessions
        FOR EACH ROW EXECUTE FUNCTION test_log_stage()""",
]
_POSTGRES_DOWN = [
    "DROP TRIGGER IF EXISTS test_stage_log ON coaching_sessions",
    "DROP FUNCTION IF EXISTS test_log_stage()",
    "DROP TABLE IF EXISTS test_stage_log",
]

# The moves the wrap-up state machine allows between two stored positions (each a real change).
LEGAL_MOVES = {
    ("active", "active"),  # a turn answered
    ("active", "confirming"),  # asked whether to finish
    ("confirming", "active"),  # anything but a yes, answered with a normal reply
    ("active", "wrapping_up"),
    ("confirming", "wrapping_up"),
    ("wrapping_up", "ended"),
}


@dataclass(frozen=True)
class Stored:
    stage: str
    turns: int


class StageLog:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def history(self, session_id: str) -> list[Stored]:
        query = sa.text("SELECT stage, turns FROM test_stage_log WHERE session_id = :id ORDER BY id")
        async with self._engine.connect() as conn:
            return [Stored(row.stage, row.turns) for row in await conn.execute(query, {"id": session_id})]


def illegal_moves(history: Sequence[Stored]) -> list[tuple[Stored, Stored]]:
    """Moves the state machine does not allow: backwards, out of ENDED, a second question in a row, a stage
    written again without a change, a turn counted without a reply (or a reply without its turn)."""
    wrong = []
    for before, after in itertools.pairwise(history):
        counted = after.turns - before.turns
        replied = (before.stage, after.stage) in {("active", "active"), ("confirming", "active")}
        if (before.stage, after.stage) not in LEGAL_MOVES or counted != int(replied):
            wrong.append((before, after))
    return wrong


@contextlib.asynccontextmanager
async def stage_log(database_url: str) -> AsyncIterator[StageLog]:
    engine = create_async_engine(database_url)
    sqlite = engine.dialect.name == "sqlite"
    try:
        async with engine.begin() as conn:
            for statement in _SQLITE_UP if sqlite else _POSTGRES_DOWN + _POSTGRES_UP:
                await conn.execute(sa.text(statement))
        yield StageLog(engine)
    finally:
        async with engine.begin() as conn:
            for statement in _SQLITE_DOWN if sqlite else _POSTGRES_DOWN:
                await conn.execute(sa.text(statement))
        await engine.dispose()
