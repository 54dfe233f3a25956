"""Pauses and partitions, with real processes on one Postgres: a replica stopped (SIGSTOP) past its lease, and
a replica cut off from the database by a TCP proxy that stalls and drops its connections.

In both, another replica ends the reply INTERRUPTED once the lease expired; when the first one comes back it
must write nothing (fenced by its lease's owner and epoch), the stored terminal state never changes, and every
reader's terminal event — the follower's on the other replica and the original stream's on the paused one —
agrees with what is stored.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator

import grpc
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from chat.v1 import chat_pb2 as pb
from service.llm.fake import scripted_tokens
from service.storage.tables import messages
from tests.clients.proxy import BreakingProxy
from tests.e2e.conftest import ServerFactory
from tests.e2e.test_faults import Client, drain, mint_key, read_text

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.timeout(120)]

LEASE = "1.5"  # seconds: short, so that losing it takes little test time
SLOW = {"CHAT_LEASE_SECONDS": LEASE, "CHAT_FAKE_TOKENS_PER_SECOND": "40", "CHAT_FAKE_REPLY_TOKENS": "300"}
ENDING = {"interrupted": "0", "continued": "2"}  # CHAT_MAX_CONTINUATIONS on the surviving replica


async def assembled(call: grpc.aio.UnaryStreamCall, text: str) -> tuple[str, pb.Message]:
    """A stream read to its `completed`, as a client shows it (after `text`, read already): deltas appended,
    rewinds cutting back."""
    async with asyncio.timeout(30):
        while (response := await call.read()) is not grpc.aio.EOF:
            event = response.event
            if event.HasField("rewind"):
                text = text[: event.rewind.offset]
            elif event.HasField("delta"):
                assert event.delta.offset == len(text)
                text += event.delta.text
            elif event.HasField("completed"):
                return text, event.completed.message
    raise AssertionError("the stream ended without `completed`")


async def stored_row(database_url: str, message_id: str) -> tuple[str, str, object, int]:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            c = messages.c
            query = sa.select(c.status, c.content, c.update_time, c.lease_epoch).where(c.id == message_id)
            row = (await conn.execute(query)).one()
    finally:
        await engine.dispose()
    return (row.status, row.content, row.update_time, row.lease_epoch)


async def follow_to_end(client: Client, message_id: str) -> pb.Message:
    """A follower on another replica: ResumeReply from 0 to its terminal event."""
    async with asyncio.timeout(30):
        text, last, error = await drain(client.resume(message_id))
    assert error is None, error
    assert last is not None and last.HasField("completed")
    assert text == last.completed.message.content
    return last.completed.message


@pytest.fixture
async def proxy_to_postgres(postgres_database: str) -> AsyncIterator[tuple[BreakingProxy, str]]:
    url = sa.make_url(postgres_database)
    proxy = BreakingProxy(url.host or "127.0.0.1", url.port or 5432)
    address = await proxy.start()
    host, _, port = address.rpartition(":")
    yield proxy, url.set(host=host, port=int(port)).render_as_string(hide_password=False)
    proxy.flow()
    await proxy.close()


@pytest.mark.parametrize("ending", ["interrupted", "continued"])
async def test_a_replica_paused_past_its_lease_never_writes_the_reply_again(
    servers: ServerFactory, postgres_database: str, ending: str
) -> None:
    """B ends the reply INTERRUPTED (continuing off) or continues it to COMPLETED; either way, once it ended,
    A wakes up and writes nothing, and A's own reader ends with what is stored (rewound past A's unstored text)."""
    a = servers(postgres_database, **SLOW, CHAT_MAX_CONTINUATIONS=ENDING[ending])
    b = servers(postgres_database, **SLOW, CHAT_MAX_CONTINUATIONS=ENDING[ending])
    key = mint_key(a)
    on_a, on_b = Client(a, key), Client(b, key)
    try:
        conversation_id = await on_a.conversation()
        call = on_a.stream(conversation_id, "pause me")
        message_id = (await call.read()).event.started.assistant_message.message_id
        seen = await read_text(call, 30)
        await read_text(on_b.resume(message_id), 1)  # B reads flushed text: the row holds some

        a.signal(signal.SIGSTOP)  # a stop-the-world pause, longer than the lease
        on_b_final = await follow_to_end(on_b, message_id)
        expected = pb.MESSAGE_STATUS_COMPLETED if ending == "continued" else pb.MESSAGE_STATUS_INTERRUPTED
        assert on_b_final.status == expected
        before = await stored_row(postgres_database, message_id)
        assert before[:2] == (ending.replace("continued", "completed"), on_b_final.content)

        a.signal(signal.SIGCONT)  # A wakes up with a reply it believes it still owns
        shown, final = await assembled(call, seen)
        assert final == on_b_final and shown == final.content  # A's reader: exactly what is stored

        assert await stored_row(postgres_database, message_id) == before  # A wrote nothing
        # A serves on, and its next reply is its own.
        _, again, error = await drain(on_a.stream(conversation_id, "and now?"))
        assert error is None and again is not None
        assert again.completed.message.status == pb.MESSAGE_STATUS_COMPLETED
    finally:
        a.signal(signal.SIGCONT)
        await on_a.close()
        await on_b.close()


@pytest.mark.parametrize("partition", ["stall", "stall-then-drop"])
async def test_a_replica_cut_off_from_the_database_past_its_lease_is_fenced_when_it_returns(
    servers: ServerFactory, postgres_database: str, proxy_to_postgres: tuple[BreakingProxy, str], partition: str
) -> None:
    proxy, through_proxy = proxy_to_postgres
    # The proxy runs on this loop: starting a server must not block it. Continuing off: B ends it INTERRUPTED.
    a = await asyncio.to_thread(servers, through_proxy, **SLOW)
    b = servers(postgres_database, CHAT_LEASE_SECONDS=LEASE, CHAT_MAX_CONTINUATIONS="0")
    key = mint_key(b)
    on_a, on_b = Client(a, key), Client(b, key)
    try:
        conversation_id = await on_a.conversation()
        call = on_a.stream(conversation_id, "cut me off")
        message_id = (await call.read()).event.started.assistant_message.message_id
        seen = ""
        await read_text(on_b.resume(message_id), 1)

        proxy.stall()  # A's statements hang: no answer, no error
        if partition == "stall-then-drop":
            proxy.break_all()  # and its connections die: its flushes fail and back off
        on_b_final = await follow_to_end(on_b, message_id)
        before = await stored_row(postgres_database, message_id)
        assert before[:2] == ("interrupted", on_b_final.content)
        # Meanwhile A's client still receives text from A's memory, past what is stored.
        seen = await read_text(call, len(on_b_final.content) + 20)
        assert seen.startswith(on_b_final.content[:10])

        proxy.flow()  # the partition heals
        shown, final = await assembled(call, seen)
        assert final == on_b_final and shown == final.content  # rewound to the stored text
        assert await stored_row(postgres_database, message_id) == before
    finally:
        proxy.flow()
        await on_a.close()
        await on_b.close()


async def test_the_follower_and_the_owner_agree_when_the_owner_ends_first(
    servers: ServerFactory, postgres_database: str
) -> None:
    """The ordinary case, for contrast: no pause; both readers end with the one stored COMPLETED reply."""
    a = servers(postgres_database, CHAT_LEASE_SECONDS=LEASE, CHAT_FAKE_REPLY_TOKENS="40")
    b = servers(postgres_database, CHAT_LEASE_SECONDS=LEASE)
    key = mint_key(a)
    on_a, on_b = Client(a, key), Client(b, key)
    try:
        conversation_id = await on_a.conversation()
        call = on_a.stream(conversation_id, "no pause")
        message_id = (await call.read()).event.started.assistant_message.message_id
        follower = asyncio.ensure_future(follow_to_end(on_b, message_id))
        async with asyncio.timeout(30):
            _, last, error = await drain(call)
        assert error is None and last is not None
        assert await follower == last.completed.message
        status, content, _, _ = await stored_row(postgres_database, message_id)
        assert (status, content) == ("completed", last.completed.message.content)
    finally:
        await on_a.close()
        await on_b.close()


async def test_the_generating_replica_killed_another_continues_and_the_follower_gets_one_completed_reply(
    servers: ServerFactory, postgres_database: str
) -> None:
    """Failover continuation: SIGKILL of the replica writing a reply while a follower reads it on another; the
    follower ends with one seamless COMPLETED reply, equal to what is stored and to what the model writes in
    one go. The takeover time (kill to the first continued text) is bounded by the lease plus a sweep."""
    a = servers(postgres_database, **SLOW)
    b = servers(postgres_database, **SLOW)
    key = mint_key(a)
    on_a, on_b = Client(a, key), Client(b, key)
    try:
        conversation_id = await on_a.conversation()
        call = on_a.stream(conversation_id, "finish me anyway")
        message_id = (await call.read()).event.started.assistant_message.message_id
        await read_text(call, 30)
        follower = on_b.resume(message_id)
        text, generations = "", set()
        while len(text) < 10:  # B serves stored text: some is flushed
            event = (await follower.read()).event
            text += event.delta.text
        a.signal(signal.SIGKILL)
        killed = time.monotonic()
        taken_over_after: float | None = None
        async with asyncio.timeout(60):
            while (response := await follower.read()) is not grpc.aio.EOF:
                event = response.event
                assert not event.HasField("rewind")  # the follower only ever read stored text
                if event.HasField("delta"):
                    assert event.delta.offset == len(text)
                    text += event.delta.text
                    generations.add(event.delta.generation)
                    if event.delta.generation == 2 and taken_over_after is None:
                        taken_over_after = time.monotonic() - killed
                last = event
        final = last.completed.message
        full = "".join(scripted_tokens("finish me anyway", 300))
        assert (final.status, final.content, final.continuations) == (pb.MESSAGE_STATUS_COMPLETED, full, 1)
        assert text == full and generations >= {2}
        status, content, _, _ = await stored_row(postgres_database, message_id)
        assert (status, content) == ("completed", full)
        assert taken_over_after is not None and taken_over_after < float(LEASE) + 5
        print(f"takeover: first continued text {taken_over_after:.2f} s after SIGKILL (lease {LEASE} s)")
    finally:
        await on_a.close()
        await on_b.close()
