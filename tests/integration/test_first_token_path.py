"""What a reply's start and end cost the database: on the first-token path, one transaction of as few statements
as the database allows (on Postgres: the lock that also makes the reply the current leaf, the branch read, one
INSERT), and the files the history carries read only when it carries some; at the end one UPDATE in the
driver's autocommit (no BEGIN, no COMMIT: one round trip)."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa

from chat.v1 import chat_pb2 as pb
from tests.integration.harness import Replica, running_replica, settings_for
from tests.integration.test_attachments_rpc import upload

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def replica(database_url: str) -> AsyncIterator[Replica]:
    # No flush ticks or sweeps while a start is watched (they use connections of their own anyway).
    async with running_replica(settings_for(database_url, flush_interval_ms=250, lease_seconds=60)) as running:
        yield running


async def start_statements(replica: Replica, request: pb.StreamReplyRequest) -> list[str]:
    """The statements of the transaction that stored `request`'s messages (the one that INSERTs them), each as its
    verb and table; the reply is then read to its end."""
    by_connection: dict[int, list[str]] = defaultdict(list)

    def record(conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        verb = statement.split()[0]
        table = re.search(r"\b(?:UPDATE|INTO|FROM)\s+(\w+)", statement) if verb != "WITH" else None
        by_connection[id(conn.connection.dbapi_connection)].append(f"{verb} {table[1]}" if table else verb)

    def begin(conn: Any) -> None:
        by_connection[id(conn.connection.dbapi_connection)].append("BEGIN")

    engine = replica.app.deps.database.engine.sync_engine
    sa.event.listen(engine, "before_cursor_execute", record)
    sa.event.listen(engine, "begin", begin)
    try:
        call = replica.stub.StreamReply(request, metadata=await replica.auth("alice"))
        async for response in call:
            if response.event.HasField("started"):
                break
        call.cancel()
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
        sa.event.remove(engine, "begin", begin)
    starts = []
    for statements in by_connection.values():
        transactions = " ; ".join(statements).split("BEGIN")
        starts += [t.strip(" ;").split(" ; ") for t in transactions if "INSERT messages" in t]
    assert len(starts) == 1, by_connection
    return starts[0]


async def conversation_with_history(replica: Replica) -> str:
    conversation = await replica.conversation("alice")
    request = pb.SendMessageRequest(conversation_id=conversation.conversation_id, content="first")
    await replica.stub.SendMessage(request, metadata=await replica.auth("alice"))
    return conversation.conversation_id


async def test_a_reply_after_a_history_without_files_is_three_statements_on_postgres(
    replica: Replica, database_url: str
) -> None:
    conversation_id = await conversation_with_history(replica)

    statements = await start_statements(
        replica, pb.StreamReplyRequest(conversation_id=conversation_id, content="second")
    )

    if database_url.startswith("postgresql"):
        assert statements == ["UPDATE conversations", "WITH", "INSERT messages"]
    else:  # SQLite: its RETURNING cannot show the leaf replaced, so the leaf is set by a statement of its own
        assert statements == ["UPDATE conversations", "UPDATE conversations", "WITH", "INSERT messages"]


async def test_the_files_a_history_carries_are_read_for_the_prompt(replica: Replica) -> None:
    conversation = await replica.conversation("alice")
    note = await upload(replica, "alice", b"remember the milk\n", filename="note.txt", content_type="text/plain")
    first = pb.SendMessageRequest(
        conversation_id=conversation.conversation_id, content="first", attachment_ids=[note.attachment_id]
    )
    await replica.stub.SendMessage(first, metadata=await replica.auth("alice"))

    statements = await start_statements(
        replica, pb.StreamReplyRequest(conversation_id=conversation.conversation_id, content="second")
    )

    assert statements[-1] == "SELECT message_attachments"  # the history's files, after the INSERT


async def test_a_reply_ends_with_one_statement_outside_any_transaction(replica: Replica) -> None:
    conversation = await replica.conversation("alice")
    final_writes: list[bool] = []  # for each final write: whether the driver had a transaction open after it

    def record(conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        assignments = statement.split("WHERE")[0]
        if statement.startswith("UPDATE messages") and " status=" in assignments:
            driver = conn.connection.driver_connection
            open_transaction = driver.is_in_transaction() if hasattr(driver, "is_in_transaction") else None
            final_writes.append(driver.in_transaction if open_transaction is None else open_transaction)

    engine = replica.app.deps.database.engine.sync_engine
    sa.event.listen(engine, "after_cursor_execute", record)
    try:
        request = pb.SendMessageRequest(conversation_id=conversation.conversation_id, content="hello")
        sent = await replica.stub.SendMessage(request, metadata=await replica.auth("alice"))
    finally:
        sa.event.remove(engine, "after_cursor_execute", record)

    assert sent.message.status == pb.MESSAGE_STATUS_COMPLETED
    assert final_writes == [False]  # committed by the statement itself: no COMMIT round trip follows
