"""Failure modes reported against other streaming-chat products, each pinned by a test over a real server.

- a stream that never gets its terminal event;
- a cancel that does not reach a resumed stream;
- text duplicated or skipped across a resume;
- a finished reply that can no longer be resumed once it is old.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from chat.v1 import chat_pb2 as pb
from service.domain import Conversation, Lease, Message, MessageStatus, Role, new_id
from service.llm.fake import scripted_tokens
from service.storage import tables
from service.storage.database import Database
from tests.integration.coach_stream import CoachCall, turn
from tests.integration.coach_stream import start as coach_start
from tests.integration.harness import Replica, running_replica, settings_for
from tests.integration.rpc_errors import error_info
from tests.wire.ollama_server import ChatScript, OllamaServer

TERMINAL_WITHIN = 15  # seconds: a stream that has not ended by then has lost its terminal event


async def ending(call: grpc.aio.UnaryStreamCall) -> tuple[str, pb.ReplyEvent | None, grpc.aio.AioRpcError | None]:
    """Read a reply stream to its end: (text, last event, error). Fails if the stream never ends."""
    text, last = "", None
    async with asyncio.timeout(TERMINAL_WITHIN):
        try:
            while (response := await call.read()) is not grpc.aio.EOF:
                last = response.event
                if last.HasField("delta"):
                    text += last.delta.text
        except grpc.aio.AioRpcError as error:
            return text, last, error
    return text, last, None


def assert_terminal(last: pb.ReplyEvent | None, error: grpc.aio.AioRpcError | None) -> None:
    """Every stream ends with `completed` or a non-OK status: never a bare end of stream."""
    assert error is not None or (last is not None and last.HasField("completed")), (last, error)


async def start(replica: Replica, content: str, user: str = "alice") -> tuple[grpc.aio.UnaryStreamCall, pb.Message]:
    conversation = await replica.conversation(user)
    call = replica.stub.StreamReply(
        pb.StreamReplyRequest(conversation_id=conversation.conversation_id, content=content),
        metadata=await replica.auth(user),
    )
    return call, (await call.read()).event.started.assistant_message


async def resume(replica: Replica, message_id: str, offset: int = 0, user: str = "alice") -> grpc.aio.UnaryStreamCall:
    return replica.stub.ResumeReply(
        pb.ResumeReplyRequest(message_id=message_id, offset=offset), metadata=await replica.auth(user)
    )


async def first_delta(call: grpc.aio.UnaryStreamCall) -> str:
    while True:
        event = (await call.read()).event
        if event.HasField("delta"):
            return event.delta.text


async def stored_reply(replica: Replica, message_id: str) -> pb.Message:
    call = await resume(replica, message_id)
    return (await call.read()).event.started.assistant_message


# --- every stream gets its terminal event


async def test_completed_cancelled_and_resumed_streams_all_end_with_completed(slow_replica: Replica) -> None:
    finished, finished_reply = await start(slow_replica, "run to the end")
    cancelled, cancelled_reply = await start(slow_replica, "cut me short")
    finished_id, cancelled_id = finished_reply.message_id, cancelled_reply.message_id
    followers = [await resume(slow_replica, finished_id), await resume(slow_replica, cancelled_id)]
    await first_delta(cancelled)
    await slow_replica.stub.CancelReply(
        pb.CancelReplyRequest(message_id=cancelled_id), metadata=await slow_replica.auth("alice")
    )
    results = await asyncio.gather(*(ending(call) for call in (finished, cancelled, *followers)))
    for _, last, error in results:
        assert_terminal(last, error)
        assert error is None
    statuses = [last.completed.message.status for _, last, _ in results]  # type: ignore[union-attr]
    assert statuses == [
        pb.MESSAGE_STATUS_COMPLETED,
        pb.MESSAGE_STATUS_CANCELLED,
        pb.MESSAGE_STATUS_COMPLETED,
        pb.MESSAGE_STATUS_CANCELLED,
    ]


@pytest.fixture
async def ollama() -> AsyncIterator[OllamaServer]:
    async with OllamaServer() as server:
        yield server


async def test_a_failing_generation_ends_every_stream_with_an_error(database_url: str, ollama: OllamaServer) -> None:
    settings = settings_for(database_url, llm_provider="ollama", llm_url=ollama.url, default_model="llama3.2")
    async with running_replica(settings, provider=None) as replica:
        ollama.enqueue(ChatScript(pieces=["one", " two", " three", " four"], delay=0.2, error_after=2))
        call, message = await start(replica, "fail half way")
        follower = await resume(replica, message.message_id)
        for text, last, error in await asyncio.gather(ending(call), ending(follower)):
            assert_terminal(last, error)
            assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE
            assert text == "one two"
        # Joining after the failure (a resume, or a retry with the same request_id) gets the same ending as the
        # live readers: the text, then the same non-OK status — never OK + completed{FAILED} (finding F11).
        late = await resume(replica, message.message_id)
        retried = replica.stub.StreamReply(
            pb.StreamReplyRequest(
                conversation_id=message.conversation_id, content="fail half way", request_id=message.request_id
            ),
            metadata=await replica.auth("alice"),
        )
        for text, last, error in await asyncio.gather(ending(late), ending(retried)):
            assert last is None or not last.HasField("completed")
            assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE
            assert error_info(error).reason == "MODEL_FAILED"
            assert error.details() == "the model provider failed while generating the reply"
            assert text == "one two"
        stored = (await (await resume(replica, message.message_id)).read()).event.started.assistant_message
        assert (stored.status, stored.content) == (pb.MESSAGE_STATUS_FAILED, "one two")


# --- a cancel reaches a resumed stream


async def test_cancel_reaches_a_stream_resumed_after_a_disconnect(slow_replica: Replica) -> None:
    call, message = await start(slow_replica, "resume then cancel")
    received = await first_delta(call)
    call.cancel()  # the client's connection breaks; the reply goes on
    resumed = await resume(slow_replica, message.message_id, len(received))
    received += await first_delta(resumed)
    cancelled = await slow_replica.stub.CancelReply(
        pb.CancelReplyRequest(message_id=message.message_id), metadata=await slow_replica.auth("alice")
    )
    rest, last, error = await ending(resumed)
    assert_terminal(last, error)
    assert error is None
    final = last.completed.message  # type: ignore[union-attr]
    assert final.status == pb.MESSAGE_STATUS_CANCELLED
    assert received + rest == final.content == cancelled.message.content


async def test_cancel_on_either_replica_reaches_a_stream_resumed_on_the_other(database_url: str) -> None:
    def settings(name: str):  # type: ignore[no-untyped-def]
        return settings_for(database_url, replica_id=name, fake_tokens_per_second=40, fake_reply_tokens=120)

    async with running_replica(settings("replica-a")) as a, running_replica(settings("replica-b")) as b:
        for canceller in (a, b):
            call, message = await start(a, f"follow on b, cancel on {canceller.address}")
            received = await first_delta(call)
            call.cancel()
            followed = await resume(b, message.message_id, len(received))
            received += await first_delta(followed)
            await canceller.stub.CancelReply(
                pb.CancelReplyRequest(message_id=message.message_id), metadata=await canceller.auth("alice")
            )
            rest, last, error = await ending(followed)
            assert_terminal(last, error)
            assert error is None
            final = last.completed.message  # type: ignore[union-attr]
            assert final.status == pb.MESSAGE_STATUS_CANCELLED
            assert received + rest == final.content


# --- nothing duplicated or skipped across resumes

REPLY_TOKENS = 80


@pytest.fixture
async def pacing_replica(database_url: str) -> AsyncIterator[Replica]:
    settings = settings_for(database_url, fake_tokens_per_second=400, fake_reply_tokens=REPLY_TOKENS)
    async with running_replica(settings) as running:
        yield running


async def disconnect_and_resume(replica: Replica, breaks: list[int], seed: str) -> None:
    """Disconnect whenever the received text reaches a break point, resume from what was received."""
    call, message = await start(replica, seed)
    received = ""
    async with asyncio.timeout(TERMINAL_WITHIN):
        while True:
            event = (await call.read()).event
            if event.HasField("completed"):
                break
            if event.HasField("delta"):
                assert event.delta.offset == len(received)  # never a gap, never an overlap
                received += event.delta.text
            if breaks and len(received) >= breaks[0]:
                while breaks and len(received) >= breaks[0]:
                    breaks.pop(0)
                call.cancel()
                call = await resume(replica, message.message_id, len(received))
                assert (await call.read()).event.HasField("started")
    stored = await stored_reply(replica, message.message_id)
    assert stored.status == pb.MESSAGE_STATUS_COMPLETED
    assert received.encode() == stored.content.encode()  # byte for byte
    assert stored.content == "".join(scripted_tokens(seed, REPLY_TOKENS))


async def test_text_received_across_random_disconnects_equals_the_stored_reply(pacing_replica: Replica) -> None:
    # Hypothesis drives the examples from a worker thread; each runs on this loop, next to the server.
    loop = asyncio.get_running_loop()

    @settings(max_examples=15, deadline=None, database=None)
    @given(
        breaks=st.lists(st.integers(min_value=0, max_value=500), max_size=6).map(sorted),
        # Any text the service accepts: not blank, no NUL (both INVALID_ARGUMENT), no surrogates (not UTF-8).
        seed=st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=20).filter(
            str.strip
        ),
    )
    def check(breaks: list[int], seed: str) -> None:
        example = disconnect_and_resume(pacing_replica, breaks, seed)
        try:
            asyncio.run_coroutine_threadsafe(example, loop).result(timeout=TERMINAL_WITHIN + 5)
        except grpc.aio.AioRpcError as error:  # report it as text: grpc objects stay on their own loop
            raise AssertionError(f"{error.code()}: {error.details()}") from None

    await asyncio.to_thread(check)


# --- an old finished reply resumes like a new one


async def test_resuming_an_old_finished_reply_after_a_restart(database_url: str) -> None:
    settings = settings_for(database_url, fake_reply_tokens=30)
    async with running_replica(settings) as replica:
        call, message = await start(replica, "remember me")
        text, _, error = await ending(call)
        assert error is None
    long_ago = datetime(2019, 1, 1, tzinfo=UTC)
    database = Database(database_url)  # age it: years old, and nothing of it left in any process's memory
    try:
        async with database.connection() as connection:
            await connection.execute(sa.update(tables.messages).values(create_time=long_ago, update_time=long_ago))
            await connection.commit()
    finally:
        await database.dispose()

    async with running_replica(settings) as restarted:
        for offset in (0, 7, len(text)):
            call = await resume(restarted, message.message_id, offset)
            started = (await call.read()).event.started.assistant_message
            rest, last, error = await ending(call)
            assert error is None and last is not None
            assert started.create_time.ToDatetime(tzinfo=UTC) == long_ago
            assert rest == text[offset:]
            assert last.completed.message.content == text
            assert last.completed.message.status == pb.MESSAGE_STATUS_COMPLETED
        beyond = await resume(restarted, message.message_id, len(text) + 1)
        _, _, error = await ending(beyond)
        assert error is not None and error.code() == grpc.StatusCode.OUT_OF_RANGE


# --- found by the service state machine (tests/integration/test_service_state_machine.py)


async def test_a_coaching_session_started_in_a_conversation_deleted_meanwhile_is_not_found(
    replica: Replica, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The session's row was inserted in a transaction of its own after the conversation was checked: when the
    conversation was deleted in between, its foreign key failed and the caller got INTERNAL."""
    conversation_id = (await replica.conversation("alice")).conversation_id
    conversations = replica.app.deps.use_cases.conversations
    given_the_persona = conversations.update

    async def deleted_once_checked(principal: Any, conversation_id: str, *args: Any) -> Any:
        conversation = await given_the_persona(principal, conversation_id, *args)
        await conversations.delete(principal, conversation_id)  # a DeleteConversation that lands just now
        return conversation

    monkeypatch.setattr(conversations, "update", deleted_once_checked)
    call = CoachCall(replica.stub, await replica.auth("alice"))
    await call.send(coach_start(persona="english_buddy", conversation_id=conversation_id))

    failure = await call.error()

    assert failure.code() == grpc.StatusCode.NOT_FOUND, failure.details()


async def test_a_retry_after_its_reply_was_deleted_is_not_found(replica: Replica) -> None:
    """The retry found the request's user message without its reply (deleted since) and answered INVALID_ARGUMENT,
    "request_id was already used by another kind of request": it is the same request; what it made is gone."""
    conversation_id = (await replica.conversation("alice")).conversation_id
    auth = await replica.auth("alice")
    request = pb.SendMessageRequest(conversation_id=conversation_id, content="hello", request_id="once-1")
    sent = await replica.stub.SendMessage(request, metadata=auth)
    await replica.stub.DeleteMessage(pb.DeleteMessageRequest(message_id=sent.message.message_id), metadata=auth)

    with pytest.raises(grpc.aio.AioRpcError) as retried:
        await replica.stub.SendMessage(request, metadata=auth)

    assert retried.value.code() == grpc.StatusCode.NOT_FOUND, retried.value.details()


async def test_a_coaching_session_whose_closing_words_were_deleted_still_ends(slow_replica: Replica) -> None:
    """The closing reply is keyed by the session (every stream following the wrap-up joins it). Once it was deleted,
    the learner's message that began the wrap-up was left with that key and no reply: every rejoin and every end
    failed INVALID_ARGUMENT, and the session could never end."""
    replica = slow_replica
    first = CoachCall(replica.stub, await replica.auth("alice"))
    session = (await first.begin(persona="english_buddy")).session
    await first.ask(turn("I have to go now"), "wrap_up_confirmation")
    await first.send(turn("yes"))
    assert (await first.call.read()).HasField("delta")  # the closing words have begun
    first.call.cancel()  # the client drops; the session is wrapping up
    auth = await replica.auth("alice")
    listed = await replica.stub.ListMessages(
        pb.ListMessagesRequest(conversation_id=session.conversation_id), metadata=auth
    )
    closing = listed.messages[-1]
    assert closing.role == pb.ROLE_ASSISTANT
    await replica.stub.DeleteMessage(pb.DeleteMessageRequest(message_id=closing.message_id), metadata=auth)

    again = CoachCall(replica.stub, auth)
    assert (await again.begin(session_id=session.session_id)).rejoined
    ended = (await again.read_until("session_ended")).last

    assert ended is not None and ended.session_ended.session.stage == pb.COACHING_STAGE_ENDED
    assert ended.session_ended.message.message_id != closing.message_id
    assert ended.session_ended.summary


async def _delete_conversation(database: Database, conversation_id: str) -> None:
    async with database.unit_of_work() as uow:
        await uow.conversations.delete(conversation_id)
        await uow.commit()


async def _until_someone_waits_for_a_lock(database: Database) -> None:
    waiting = sa.text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    async with asyncio.timeout(10):
        while True:
            async with database.engine.connect() as conn:
                if (await conn.execute(waiting)).scalar():
                    return
            await asyncio.sleep(0.01)


@pytest.mark.postgres
async def test_deleting_a_conversation_locks_it_before_its_messages(postgres_database: str) -> None:
    """DeleteConversation deleted the conversation's messages, then the conversation. A reply starting meanwhile
    locks the conversation, then ends the leaf left by a stopped replica (ensure_idle): each waited for the other,
    and Postgres broke the deadlock by failing one of them, INTERNAL. Every writer locks the conversation first."""
    database = Database(postgres_database)
    now = datetime.now(UTC)
    conversation = Conversation(new_id(), "alice", "t", "m", "", "", now, now)
    leaf = Message(new_id(), conversation.id, "alice", Role.ASSISTANT, "", MessageStatus.STREAMING, now, now)
    try:
        async with database.unit_of_work() as uow:
            await uow.conversations.add(conversation)
            await uow.messages.add(leaf, lease=Lease("stopped-replica", 1, now - timedelta(seconds=1)))
            await uow.conversations.set_current(conversation.id, leaf.id, now)
            await uow.commit()
        async with database.unit_of_work() as starting:  # as Replies._insert: the conversation locked first
            assert await starting.conversations.touch_and_lock(conversation.id, now) is not None
            deleting = asyncio.create_task(_delete_conversation(database, conversation.id))
            await _until_someone_waits_for_a_lock(database)
            ended = await starting.messages.mark_abandoned(
                now=now, status=MessageStatus.INTERRUPTED.value, error_message="stopped", message_id=leaf.id
            )
            await starting.commit()
        await asyncio.wait_for(deleting, 10)
        assert ended == [leaf.id]
        async with database.unit_of_work() as uow:
            assert await uow.conversations.get(conversation.id) is None
    finally:
        await database.dispose()
