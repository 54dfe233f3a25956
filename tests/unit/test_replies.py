"""Reply use cases (`Replies`) against the in-memory storage, a scripted provider and a clock that stands still."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

import pytest

from service.domain import (
    ChatTurn,
    Conversation,
    FailedPrecondition,
    FinishReason,
    InvalidArgument,
    Lease,
    Message,
    MessageStatus,
    ModelFailed,
    ModelNotFound,
    ModelUnavailable,
    NotFound,
    OutOfRange,
    PermissionDenied,
    Principal,
    Prompt,
    Role,
    Unavailable,
    new_id,
)
from service.personas import PersonaCatalog
from service.ports import Flush, Provider
from service.replies import Delta, Ended, Replies, ReplyEvent, ReplyOptions, Rewind, Started
from service.replies.generation import STOP_MESSAGES
from service.replies.generations import ABANDONED_MESSAGE
from service.storage.notifications import LocalNotifications
from tests.fakes import FakeClock, FakeStorage, ScriptedProvider
from tests.wired import Wire

REPLICA = "replica-a"
ALICE = Principal("alice")
BOB = Principal("bob")
MODEL = "scripted"
WAIT = 5.0  # seconds: the bound on every wait for an event


class MakeReplies(Protocol):
    def __call__(self, provider: Provider, *, replica_id: str = ..., **limits: Any) -> Replies: ...


@pytest.fixture
def make_replies(wired: Wire) -> MakeReplies:
    """Builds `Replies` as `service.app.build` does, with short intervals; closed after the test."""
    notifications = LocalNotifications()  # one process: replicas built here share the bus

    def make(provider: Provider, *, replica_id: str = REPLICA, **limits: Any) -> Replies:
        settings = {"flush_interval": 0.01, "lease_seconds": 10.0, **limits}
        return wired(
            provider, replica_id=replica_id, notifications=notifications, replies=ReplyOptions(**settings)
        ).replies

    return make


# ---------------------------------------------------------------------------------------------- helpers


async def add_conversation(
    storage: FakeStorage, clock: FakeClock, *, owner: str = "alice", model: str = MODEL, **fields: str
) -> Conversation:
    conversation = Conversation(
        id=new_id(),
        owner=owner,
        title="t",
        model=model,
        persona=fields.get("persona", ""),
        system_prompt=fields.get("system_prompt", ""),
        create_time=clock(),
        update_time=clock(),
    )
    async with storage.unit_of_work() as uow:
        await uow.conversations.add(conversation)
        await uow.commit()
    return conversation


def message_in(
    conversation: Conversation,
    role: Role,
    content: str,
    when: datetime,
    *,
    status: MessageStatus = MessageStatus.COMPLETED,
    request_id: str = "",
) -> Message:
    return Message(
        id=new_id(),
        conversation_id=conversation.id,
        owner=conversation.owner,
        role=role,
        content=content,
        status=status,
        create_time=when,
        update_time=when,
        model=conversation.model if role is Role.ASSISTANT else "",
        request_id=request_id,
    )


async def add_messages(storage: FakeStorage, *messages: Message, lease: Lease | None = None) -> list[Message]:
    """`messages` as replies store them: each on the end of its conversation's current branch, which it ends."""
    added = []
    async with storage.unit_of_work() as uow:
        for message in messages:
            conversation = await uow.conversations.get(message.conversation_id)
            assert conversation is not None
            message = dataclasses.replace(message, parent_id=conversation.current_message_id)
            await uow.messages.add(message, lease=lease if message.status is MessageStatus.STREAMING else None)
            await uow.conversations.set_current(conversation.id, message.id, conversation.update_time)
            added.append(message)
        await uow.commit()
    return added


async def add_reply_in_flight(
    storage: FakeStorage,
    clock: FakeClock,
    conversation: Conversation,
    *,
    content: str = "",
    lease_owner: str = "replica-b",
    lease_expires_at: datetime,
) -> Message:
    """A reply another replica (or a previous run) is generating, as it would have stored it."""
    request_id = new_id()
    user = message_in(conversation, Role.USER, "question", clock(), request_id=request_id)
    reply = message_in(
        conversation, Role.ASSISTANT, content, clock(), status=MessageStatus.STREAMING, request_id=request_id
    )
    return (await add_messages(storage, user, reply, lease=Lease(lease_owner, 1, lease_expires_at)))[-1]


async def collect(events: AsyncIterator[ReplyEvent], *, into: list[ReplyEvent] | None = None) -> list[ReplyEvent]:
    """Every event up to the end; `into` keeps those received before an error."""
    received = [] if into is None else into
    async with asyncio.timeout(WAIT):
        async for event in events:
            received.append(event)
    return received


async def next_event(events: AsyncIterator[ReplyEvent]) -> ReplyEvent:
    async with asyncio.timeout(WAIT):
        return await anext(events)


async def wait_for(event: asyncio.Event) -> None:
    async with asyncio.timeout(WAIT):
        await event.wait()


async def stored_state(storage: FakeStorage, condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT):
        await storage.wait_until(condition)


def text_of(events: Sequence[ReplyEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, Delta))


def ended(events: Sequence[ReplyEvent]) -> Message:
    last = events[-1]
    assert isinstance(last, Ended)
    return last.message


async def final_state(replies: Replies, message_id: str) -> Message:
    """Follow a reply to its end, as a client would with ResumeReply."""
    return ended(await collect(replies.resume(ALICE, message_id, 0)))


async def bounded(awaitable: Awaitable[Any]) -> Any:
    async with asyncio.timeout(WAIT):
        return await awaitable


def assert_contiguous(events: Sequence[ReplyEvent], start: int = 0) -> None:
    offset = start
    for event in events:
        if isinstance(event, Delta):
            assert event.offset == offset
            offset += len(event.text)


def violated_field(error: pytest.ExceptionInfo[InvalidArgument]) -> str:
    (violation,) = error.value.violations
    return violation.field


# ---------------------------------------------------------------------------------------------- streaming


async def test_stream_yields_started_contiguous_deltas_and_a_completed_end(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock
) -> None:
    provider = ScriptedProvider(["Hel", "lo ", "wörld ", "🙂"], delay=0.001)
    replies = make_replies(provider)
    conversation = await add_conversation(storage, clock)

    events = await collect(replies.stream(ALICE, conversation.id, "hi there", "req-1"))

    started = events[0]
    assert isinstance(started, Started)
    assert started.user_message is not None
    assert (started.user_message.role, started.user_message.content) == (Role.USER, "hi there")
    assert started.user_message.status is MessageStatus.COMPLETED
    assistant = started.assistant_message
    assert (assistant.role, assistant.status, assistant.model) == (Role.ASSISTANT, MessageStatus.STREAMING, MODEL)
    assert started.user_message.request_id == assistant.request_id == "req-1"
    assert_contiguous(events)
    assert text_of(events) == "Hello wörld 🙂"
    final = ended(events)
    assert final.id == assistant.id
    assert (final.status, final.content, final.finish_reason) == (
        MessageStatus.COMPLETED,
        "Hello wörld 🙂",
        FinishReason.STOP,
    )
    assert final.usage.completion_tokens == 4
    assert storage.message(final.id) == final
    assert storage.messages_in(conversation.id) == [started.user_message, final]


async def test_a_finished_reply_holds_no_lease_and_touches_the_conversation(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock
) -> None:
    replies = make_replies(ScriptedProvider())
    conversation = await add_conversation(storage, clock)
    clock.advance(60)

    _, final = await replies.send(ALICE, conversation.id, "hi", "", background=False)

    row = storage.row(final.id)
    assert row is not None and (row.lease_owner, row.lease_expires_at) == (None, None)
    touched = storage.conversation(conversation.id)
    assert touched is not None and touched.update_time > conversation.update_time
    assert replies.in_flight == 0


async def test_send_in_the_background_returns_the_reply_still_streaming(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock
) -> None:
    provider = ScriptedProvider(pause_after=0)
    replies = make_replies(provider)
    conversation = await add_conversation(storage, clock)

    _, assistant = await replies.send(ALICE, conversation.id, "hi", "", background=True)

    assert assistant.status is MessageStatus.STREAMING
    assert replies.in_flight == 1
    row = storage.row(assistant.id)
    assert row is not None and row.lease_owner == REPLICA
    assert row.lease_expires_at == clock() + timedelta(seconds=10)
    provider.release.set()
    assert (await final_state(replies, assistant.id)).status is MessageStatus.COMPLETED


async def test_the_user_message_is_committed_before_the_model_is_called(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock
) -> None:
    conversation = await add_conversation(storage, clock)
    seen: list[list[tuple[Role, str, MessageStatus]]] = []
    provider = ScriptedProvider(
        on_stream=lambda _: seen.append([(m.role, m.content, m.status) for m in storage.messages_in(conversation.id)])
    )
    replies = make_replies(provider)

    await replies.send(ALICE, conversation.id, "hi", "", background=False)

    assert seen == [[(Role.USER, "hi", MessageStatus.COMPLETED), (Role.ASSISTANT, "", MessageStatus.STREAMING)]]


async def test_closing_the_stream_does_not_stop_the_generation(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock
) -> None:
    provider = ScriptedProvider(["a", "b", "c"], pause_after=1)
    replies = make_replies(provider)
    conversation = await add_conversation(storage, clock)
    events = replies.stream(ALICE, conversation.id, "hi", "")
    started = await next_event(events)
    assert isinstance(started, Started)
    assert await next_event(events) == Delta("a", 0, 1)

    await events.aclose()  # type: ignore[attr-defined]  # the client disconnected
    provider.release.set()

    final = await final_state(replies, started.assistant_message.id)
    assert (final.status, final.content) == (MessageStatus.COMPLETED, "abc")


@pytest.mark.parametrize(
    ("content", "field"),
    [("", "content"), ("   ", "content"), ("x" * 101, "content"), ("nul\x00", "content")],
)
async def test_invalid_content_is_rejected_before_anything_is_stored(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock, content: str, field: str
) -> None:
    provider = ScriptedProvider()
    replies = make_replies(provider, max_message_bytes=100)
    conversation = await add_conversation(storage, clock)

    with pytest.raises(InvalidArgument) as error:
        await replies.send(ALICE, conversation.id, content, "", background=False)

    assert violated_field(error) == field
    assert storage.messages_in(conversation.id) == []
    assert provider.calls == 0


async def test_replying_in_another_users_conversation_is_denied(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock
) -> None:
    replies = make_replies(ScriptedProvider())
    conversation = await add_conversation(storage, clock, owner="bob")

    with pytest.raises(PermissionDenied):
        await replies.send(ALICE, conversation.id, "hi", "", background=False)
    with pytest.raises(NotFound):
        await replies.send(ALICE, new_id(), "hi", "", background=False)
    with pytest.raises(InvalidArgument):
        await replies.send(ALICE, "not-an-id", "hi", "", background=False)
    assert storage.messages_in(conversation.id) == []


# ---------------------------------------------------------------------------------------------- cancel


async def test_cancel_ends_the_reply_cancelled_with_its_partial_text(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock
) -> None:
    provider = ScriptedProvider(["ab", "cd", "ef"], pause_after=2)
    replies = make_replies(provider)
    conversation = await add_conversation(storage, clock)
    _, assistant = await replies.send(ALICE, conversation.id, "hi", "", background=True)
    await wait_for(provider.held)
    reader = asyncio.ensure_future(collect(replies.resume(ALICE, assistant.id, 0)))

    cancelled = await bounded(replies.cancel(ALICE, assistant.id))

    assert (cancelled.status, cancelled.content, cancelled.finish_reason) == (
        MessageStatus.CANCELLED,
        "abcd",
        FinishReason.NONE,
    )
    assert storage.message(assistant.id) == cancelled
    events = await reader
    assert text_of(events) == "abcd"
    assert ended(events) == cancelled
    assert replies.in_flight == 0


async def test_cancel_is_idempotent(make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock) -> None:
    provider = ScriptedProvider(pause_after=1)
    replies = make_replies(provider)
    conversation = await add_conversation(storage, clock)
    _, assistant = await replies.send(ALICE, conversation.id, "hi", "", background=True)
    await wait_for(provider.held)

    first = await bounded(replies.cancel(ALICE, assistant.id))
    second = await bounded(replies.cancel(ALICE, assistant.id))

    assert first == second
    assert storage.state.endings == [(assistant.id, MessageStatus.CANCELLED)]


async def test_cancelling_a_finished_reply_is_a_failed_precondition(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock
) -> None:
    replies = make_replies(ScriptedProvider())
    conversation = await add_conversation(storage, clock)
    _, final = await replies.send(ALICE, conversation.id, "hi", "", background=False)

    with pytest.raises(FailedPrecondition) as error:
        await replies.cancel(ALICE, final.id)

    assert error.value.metadata == {"status": "completed"}
    assert storage.message(final.id) == final


async def test_cancel_checks_the_message_and_its_owner(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock
) -> None:
    replies = make_replies(ScriptedProvider())
    conversation = await add_conversation(storage, clock)
    user, final = await replies.send(ALICE, conversation.id, "hi", "", background=False)

    with pytest.raises(PermissionDenied):
        await replies.cancel(BOB, final.id)
    with pytest.raises(NotFound):
        await replies.cancel(ALICE, new_id())
    with pytest.raises(InvalidArgument) as error:
        await replies.cancel(ALICE, user.id)
    assert violated_field(error) == "message_id"


async def test_cancel_reaches_a_reply_generated_by_another_replica(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock
) -> None:
    provider = ScriptedProvider(["ab", "cd"], pause_after=1)
    generating = make_replies(provider, replica_id="replica-a")
    other = make_replies(ScriptedProvider(), replica_id="replica-b")
    conversation = await add_conversation(storage, clock)
    _, assistant = await generating.send(ALICE, conversation.id, "hi", "", background=True)
    await wait_for(provider.held)

    cancelling = asyncio.ensure_future(other.cancel(ALICE, assistant.id))
    await stored_state(storage, lambda: storage.row(assistant.id).cancel_requested)  # type: ignore[union-attr]
    await generating.generations.tick()  # the generating replica learns of the request on its next flush

    cancelled = await bounded(cancelling)
    assert (cancelled.status, cancelled.content) == (MessageStatus.CANCELLED, "ab")
    assert generating.in_flight == 0


# ---------------------------------------------------------------------------------------------- resume


async def test_resume_in_flight_from_an_offset_gets_the_rest_then_follows_live(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock
) -> None:
    provider = ScriptedProvider(["ab", "cd", "ef"], pause_after=2)
    replies = make_replies(provider)
    conversation = await add_conversation(storage, clock)
    user, assistant = await replies.send(ALICE, conversation.id, "hi", "", background=True)
    await wait_for(provider.held)
    events = replies.resume(ALICE, assistant.id, 1)

    started = await next_event(events)
    assert started == Started(user, assistant)
    assert await next_event(events) == Delta("bcd", 1, 1)
    provider.release.set()
    rest = await collect(events)

    assert_contiguous(rest, start=4)
    assert text_of(rest) == "ef"
    assert (ended(rest).status, ended(rest).content) == (MessageStatus.COMPLETED, "abcdef")


@pytest.mark.parametrize("offset", [0, 3, 6])
async def test_resume_after_completion_replays_from_the_offset(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock, offset: int
) -> None:
    replies = make_replies(ScriptedProvider(["abc", "déf"]))
    conversation = await add_conversation(storage, clock)
    user, final = await replies.send(ALICE, conversation.id, "hi", "", background=False)

    events = await collect(replies.resume(ALICE, final.id, offset))

    assert events[0] == Started(user, final)
    assert events[1:-1] == ([Delta("abcdéf"[offset:], offset, 1)] if offset < 6 else [])
    assert ended(events) == final


async def test_resume_past_the_end_of_a_finished_reply_is_out_of_range(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock
) -> None:
    replies = make_replies(ScriptedProvider(["abc"]))
    conversation = await add_conversation(storage, clock)
    _, final = await replies.send(ALICE, conversation.id, "hi", "", background=False)

    with pytest.raises(OutOfRange):
        await collect(replies.resume(ALICE, final.id, 4))
    with pytest.raises(InvalidArgument) as error:
        await collect(replies.resume(ALICE, final.id, -1))
    assert violated_field(error) == "offset"
    with pytest.raises(PermissionDenied):
        await collect(replies.resume(BOB, final.id, 0))


# ---------------------------------------------------------------------------------------------- request ids


async def test_retrying_a_request_id_attaches_to_the_same_reply(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock
) -> None:
    provider = ScriptedProvider()
    replies = make_replies(provider)
    conversation = await add_conversation(storage, clock)
    first = await replies.send(ALICE, conversation.id, "hi", "req-1", background=False)

    again = await replies.send(ALICE, conversation.id, "hi", "req-1", background=False)

    assert again == first
    assert len(storage.messages_in(conversation.id)) == 2
    assert provider.calls == 1


async def test_retrying_a_request_id_in_flight_follows_the_live_reply(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock
) -> None:
    provider = ScriptedProvider(["ab", "cd"], pause_after=1)
    replies = make_replies(provider)
    conversation = await add_conversation(storage, clock)
    user, assistant = await replies.send(ALICE, conversation.id, "hi", "req-1", background=True)
    await wait_for(provider.held)

    events = replies.stream(ALICE, conversation.id, "hi", "req-1")
    assert await next_event(events) == Started(user, assistant)
    provider.release.set()
    rest = await collect(events)

    assert text_of(rest) == "abcd"
    assert ended(rest).status is MessageStatus.COMPLETED
    assert provider.calls == 1
    assert len(storage.messages_in(conversation.id)) == 2


async def test_reusing_a_request_id_for_different_content_is_invalid(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock
) -> None:
    replies = make_replies(ScriptedProvider())
    conversation = await add_conversation(storage, clock)
    other = await add_conversation(storage, clock)
    await replies.send(ALICE, conversation.id, "hi", "req-1", background=False)

    for conversation_id, content in ((conversation.id, "something else"), (other.id, "hi")):
        with pytest.raises(InvalidArgument) as error:
            await replies.send(ALICE, conversation_id, content, "req-1", background=False)
        assert violated_field(error) == "request_id"
    assert len(storage.messages_in(conversation.id)) == 2
    assert storage.messages_in(other.id) == []


async def test_request_ids_are_per_user(make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock) -> None:
    provider = ScriptedProvider()
    replies = make_replies(provider)
    alices = await add_conversation(storage, clock)
    bobs = await add_conversation(storage, clock, owner="bob")

    await replies.send(ALICE, alices.id, "hi", "req-1", background=False)
    _, reply = await replies.send(BOB, bobs.id, "hi", "req-1", background=False)

    assert reply.owner == "bob" and reply.status is MessageStatus.COMPLETED
    assert provider.calls == 2


async def test_a_second_message_while_a_reply_is_in_flight_is_refused(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock
) -> None:
    provider = ScriptedProvider(pause_after=1)
    replies = make_replies(provider)
    conversation = await add_conversation(storage, clock)
    _, assistant = await replies.send(ALICE, conversation.id, "first", "", background=True)
    await wait_for(provider.held)

    with pytest.raises(FailedPrecondition) as error:
        await replies.send(ALICE, conversation.id, "second", "", background=False)

    assert error.value.metadata == {"messageId": assistant.id}
    assert [m.content for m in storage.messages_in(conversation.id)] == ["first", ""]
    assert provider.calls == 1


async def test_a_reply_whose_lease_expired_does_not_block_the_next_message(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock
) -> None:
    replies = make_replies(ScriptedProvider())
    conversation = await add_conversation(storage, clock)
    stale = await add_reply_in_flight(
        storage, clock, conversation, content="half", lease_expires_at=clock() - timedelta(seconds=1)
    )

    _, final = await replies.send(ALICE, conversation.id, "hello?", "", background=False)

    assert final.status is MessageStatus.COMPLETED
    abandoned = storage.message(stale.id)
    assert abandoned is not None
    assert (abandoned.status, abandoned.content, abandoned.error_message) == (
        MessageStatus.INTERRUPTED,
        "half",
        ABANDONED_MESSAGE,
    )


# ---------------------------------------------------------------------------------------------- provider failures


async def test_an_unreachable_provider_is_retried_before_the_first_token(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock
) -> None:
    provider = ScriptedProvider(["ok"], unavailable_times=2)
    replies = make_replies(provider, provider_attempts=3)
    conversation = await add_conversation(storage, clock)

    events = await collect(replies.stream(ALICE, conversation.id, "hi", ""))

    assert text_of(events) == "ok"
    assert ended(events).status is MessageStatus.COMPLETED
    assert provider.calls == 3


async def test_a_provider_unreachable_every_time_fails_the_reply(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock
) -> None:
    provider = ScriptedProvider(unavailable_times=100)
    replies = make_replies(provider, provider_attempts=2)
    conversation = await add_conversation(storage, clock)
    events = replies.stream(ALICE, conversation.id, "hi", "")
    started = await next_event(events)
    assert isinstance(started, Started)

    with pytest.raises(ModelUnavailable):
        await collect(events)

    stored = storage.message(started.assistant_message.id)
    assert stored is not None
    assert (stored.status, stored.content) == (MessageStatus.FAILED, "")
    assert stored.error_message
    assert provider.calls == 2


async def test_a_failure_after_some_pieces_keeps_them_and_fails_the_reply(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock
) -> None:
    provider = ScriptedProvider(["ab", "cd", "ef"], fail_after=2)
    replies = make_replies(provider)
    conversation = await add_conversation(storage, clock)
    events = replies.stream(ALICE, conversation.id, "hi", "")
    started = await next_event(events)
    assert isinstance(started, Started)
    received: list[ReplyEvent] = []

    with pytest.raises(ModelFailed):
        await collect(events, into=received)

    assert text_of(received) == "abcd"
    stored = storage.message(started.assistant_message.id)
    assert stored is not None
    assert (stored.status, stored.content) == (MessageStatus.FAILED, "abcd")
    assert provider.calls == 1  # text cannot be taken back: no retry after the first token


async def test_losing_the_provider_mid_reply_is_a_model_failure_not_retried(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock
) -> None:
    provider = ScriptedProvider(["ab", "cd"], fail_after=1, failure=ModelUnavailable("connection reset"))
    replies = make_replies(provider, provider_attempts=3)
    conversation = await add_conversation(storage, clock)

    with pytest.raises(ModelFailed):
        await replies.send(ALICE, conversation.id, "hi", "", background=False)

    (_, reply) = storage.messages_in(conversation.id)
    assert (reply.status, reply.content) == (MessageStatus.FAILED, "ab")
    assert provider.calls == 1


async def test_an_unknown_model_fails_the_reply_with_model_not_found(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock
) -> None:
    provider = ScriptedProvider()
    replies = make_replies(provider)
    conversation = await add_conversation(storage, clock, model="no-such-model")

    with pytest.raises(ModelNotFound):
        await replies.send(ALICE, conversation.id, "hi", "", background=False)

    (_, reply) = storage.messages_in(conversation.id)
    assert reply.status is MessageStatus.FAILED
    assert provider.calls == 1


# ---------------------------------------------------------------------------------------------- lifecycle


async def test_start_interrupts_the_replies_this_replica_left_behind(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock
) -> None:
    later = clock() + timedelta(hours=1)
    mine = await add_reply_in_flight(
        storage, clock, await add_conversation(storage, clock), content="x", lease_owner=REPLICA, lease_expires_at=later
    )
    theirs = await add_reply_in_flight(
        storage, clock, await add_conversation(storage, clock), lease_owner="replica-b", lease_expires_at=later
    )
    replies = make_replies(ScriptedProvider(), max_continuations=0)  # continuing turned off

    await replies.start()

    interrupted = storage.message(mine.id)
    assert interrupted is not None
    assert (interrupted.status, interrupted.content) == (MessageStatus.INTERRUPTED, "x")
    assert "restarted" in interrupted.error_message
    untouched = storage.message(theirs.id)
    assert untouched is not None and untouched.status is MessageStatus.STREAMING


async def test_start_continues_the_replies_this_replica_left_behind(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock
) -> None:
    later = clock() + timedelta(hours=1)  # its lease has not expired: it is this replica's own, from its last run
    mine = await add_reply_in_flight(
        storage,
        clock,
        await add_conversation(storage, clock),
        content="Hello",
        lease_owner=REPLICA,
        lease_expires_at=later,
    )
    replies = make_replies(ScriptedProvider())

    await replies.start()

    final = await final_state(replies, mine.id)
    assert (final.status, final.content, final.continued_at) == (MessageStatus.COMPLETED, "Hello, wörld 🙂", ((2, 5),))


async def test_close_lets_a_reply_finish_within_the_grace_period(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock
) -> None:
    replies = make_replies(ScriptedProvider(["a", "b", "c"], delay=0.01))
    conversation = await add_conversation(storage, clock)
    _, assistant = await replies.send(ALICE, conversation.id, "hi", "", background=True)

    await bounded(replies.close(grace=WAIT))

    final = storage.message(assistant.id)
    assert final is not None and (final.status, final.content) == (MessageStatus.COMPLETED, "abc")
    assert replies.in_flight == 0


async def test_close_interrupts_a_reply_still_running_after_the_grace_period(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock
) -> None:
    provider = ScriptedProvider(["ab", "cd"], pause_after=1)
    replies = make_replies(provider)
    conversation = await add_conversation(storage, clock)
    _, assistant = await replies.send(ALICE, conversation.id, "hi", "", background=True)
    await wait_for(provider.held)
    reader = asyncio.ensure_future(collect(replies.resume(ALICE, assistant.id, 0)))

    await bounded(replies.close(grace=0.05))

    final = storage.message(assistant.id)
    assert final is not None
    assert (final.status, final.content, final.error_message) == (
        MessageStatus.INTERRUPTED,
        "ab",
        STOP_MESSAGES[MessageStatus.INTERRUPTED],
    )
    assert ended(await reader) == final


async def test_a_closing_replica_refuses_new_replies(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock
) -> None:
    replies = make_replies(ScriptedProvider())
    conversation = await add_conversation(storage, clock)

    await replies.close(grace=0)

    with pytest.raises(Unavailable):
        await replies.send(ALICE, conversation.id, "hi", "", background=False)
    assert storage.messages_in(conversation.id) == []


# ---------------------------------------------------------------------------------------------- flusher


async def test_the_flusher_writes_grown_text_and_renews_leases_only_when_due(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock
) -> None:
    provider = ScriptedProvider(["ab", "cd", "ef"], pause_after=2)
    replies = make_replies(provider, lease_seconds=10.0)
    conversation = await add_conversation(storage, clock)
    _, assistant = await replies.send(ALICE, conversation.id, "hi", "", background=True)
    await wait_for(provider.held)

    grown_at = clock.advance(1)
    await replies.generations.tick()
    row = storage.row(assistant.id)
    assert row is not None
    assert (row.message.content, row.message.update_time) == ("abcd", grown_at)
    assert (row.lease_owner, row.lease_expires_at) == (REPLICA, grown_at + timedelta(seconds=10))

    clock.advance(4)  # idle, and the lease has more than half of its time left: nothing to write
    await replies.generations.tick()
    assert storage.row(assistant.id) == row

    renewed_at = clock.advance(1.5)  # idle, but the lease is now within half of its term: renew it
    await replies.generations.tick()
    row = storage.row(assistant.id)
    assert row is not None
    assert (row.message.content, row.message.update_time) == ("abcd", renewed_at)
    assert row.lease_expires_at == renewed_at + timedelta(seconds=10)
    assert row.message.status is MessageStatus.STREAMING


async def test_the_flusher_leaves_a_reply_that_has_not_grown_alone(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock
) -> None:
    provider = ScriptedProvider(pause_after=0)
    replies = make_replies(provider, lease_seconds=10.0)
    conversation = await add_conversation(storage, clock)
    _, assistant = await replies.send(ALICE, conversation.id, "hi", "", background=True)
    await wait_for(provider.held)
    before = storage.row(assistant.id)

    clock.advance(1)
    await replies.generations.tick()

    assert storage.row(assistant.id) == before


async def test_the_flusher_stops_a_reply_whose_cancellation_was_requested(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock
) -> None:
    provider = ScriptedProvider(["ab", "cd"], pause_after=1)
    replies = make_replies(provider)
    conversation = await add_conversation(storage, clock)
    _, assistant = await replies.send(ALICE, conversation.id, "hi", "", background=True)
    await wait_for(provider.held)
    async with storage.unit_of_work() as uow:  # another replica handled CancelReply
        await uow.messages.request_cancel(assistant.id)
        await uow.commit()

    await replies.generations.tick()

    final = await final_state(replies, assistant.id)
    assert (final.status, final.content) == (MessageStatus.CANCELLED, "ab")
    assert replies.in_flight == 0


async def test_the_flusher_stops_a_reply_whose_row_vanished(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock
) -> None:
    provider = ScriptedProvider(["ab", "cd"], pause_after=1)
    replies = make_replies(provider)
    conversation = await add_conversation(storage, clock)
    sending = asyncio.ensure_future(replies.send(ALICE, conversation.id, "hi", "", background=False))
    await wait_for(provider.held)
    async with storage.unit_of_work() as uow:  # another replica deleted the conversation
        await uow.conversations.delete(conversation.id)
        await uow.commit()

    await replies.generations.tick()

    _, final = await bounded(sending)
    assert (final.status, final.content) == (MessageStatus.CANCELLED, "ab")
    assert replies.in_flight == 0
    assert storage.messages_in(conversation.id) == []


async def test_the_flusher_does_not_touch_other_replicas_replies(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock
) -> None:
    replies = make_replies(ScriptedProvider())
    conversation = await add_conversation(storage, clock)
    theirs = await add_reply_in_flight(
        storage, clock, conversation, content="x", lease_expires_at=clock() + timedelta(seconds=1)
    )
    before = storage.row(theirs.id)

    clock.advance(5)
    await replies.generations.tick()

    assert storage.row(theirs.id) == before


async def test_the_flushers_sweep_interrupts_replies_whose_lease_expired(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock
) -> None:
    replies = make_replies(ScriptedProvider(), max_continuations=0)  # continuing turned off: it ends INTERRUPTED
    conversation = await add_conversation(storage, clock)
    stale = await add_reply_in_flight(storage, clock, conversation, lease_expires_at=clock() + timedelta(seconds=1))

    clock.advance(2)
    await replies.generations.tick(sweep=True)

    abandoned = storage.message(stale.id)
    assert abandoned is not None
    assert (abandoned.status, abandoned.error_message) == (MessageStatus.INTERRUPTED, ABANDONED_MESSAGE)


# ---------------------------------------------------------------------------------------------- other replicas


async def test_a_reply_of_a_dead_replica_ends_interrupted_exactly_once_for_concurrent_followers(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock
) -> None:
    here = make_replies(ScriptedProvider(), replica_id="replica-a", lease_seconds=0.05, max_continuations=0)
    there = make_replies(ScriptedProvider(), replica_id="replica-c", lease_seconds=0.05, max_continuations=0)
    conversation = await add_conversation(storage, clock)
    reply = await add_reply_in_flight(
        storage, clock, conversation, content="partial", lease_expires_at=clock() - timedelta(seconds=1)
    )

    first, second = await asyncio.gather(
        collect(here.resume(ALICE, reply.id, 0)), collect(there.resume(ALICE, reply.id, 2))
    )

    assert text_of(first) == "partial" and text_of(second) == "rtial"
    assert ended(first) == ended(second)
    assert (ended(first).status, ended(first).error_message) == (MessageStatus.INTERRUPTED, ABANDONED_MESSAGE)
    assert storage.state.endings == [(reply.id, MessageStatus.INTERRUPTED)]


async def test_a_follower_sees_the_text_another_replica_flushes_and_its_end(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock
) -> None:
    replies = make_replies(ScriptedProvider())
    conversation = await add_conversation(storage, clock)
    expires = clock() + timedelta(hours=1)
    reply = await add_reply_in_flight(storage, clock, conversation, content="par", lease_expires_at=expires)
    events = replies.resume(ALICE, reply.id, 0)
    assert isinstance(await next_event(events), Started)
    assert await next_event(events) == Delta("par", 0, 1)

    async with storage.unit_of_work() as uow:
        await uow.messages.flush([Flush(reply.id, "partial", Lease("replica-b", 1, expires), expires, clock())])
        await uow.commit()
    assert await next_event(events) == Delta("tial", 3, 1)

    final = dataclasses.replace(reply, content="partial text", status=MessageStatus.COMPLETED)
    async with storage.unit_of_work() as uow:
        assert await uow.messages.finish(final, Lease("replica-b", 1, expires))
        await uow.commit()
    assert await collect(events) == [Delta(" text", 7, 1), Ended(final)]


# ---------------------------------------------------------------------------------------------- history


async def test_the_prompt_carries_the_persona_instructions_and_the_question(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock
) -> None:
    provider = ScriptedProvider()
    replies = make_replies(provider, max_reply_tokens=77)
    conversation = await add_conversation(storage, clock, persona="english_buddy")

    await replies.send(ALICE, conversation.id, "hi", "", background=False)

    (prompt,) = provider.prompts
    instructions = PersonaCatalog.load().instructions("english_buddy")
    assert prompt.turns == (ChatTurn(Role.SYSTEM, instructions), ChatTurn(Role.USER, "hi"))
    assert (prompt.model, prompt.max_tokens, prompt.conversation_id) == (MODEL, 77, conversation.id)


async def test_the_prompt_uses_the_conversations_own_system_prompt(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock
) -> None:
    provider = ScriptedProvider()
    replies = make_replies(provider)
    conversation = await add_conversation(storage, clock, system_prompt="Answer in French.")

    await replies.send(ALICE, conversation.id, "hi", "", background=False)

    assert provider.prompts[0].turns[0] == ChatTurn(Role.SYSTEM, "Answer in French.")


async def test_the_prompt_includes_earlier_turns_of_the_conversation(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock
) -> None:
    provider = ScriptedProvider(["fine"])
    replies = make_replies(provider)
    conversation = await add_conversation(storage, clock)

    await replies.send(ALICE, conversation.id, "how are you?", "", background=False)
    await replies.send(ALICE, conversation.id, "and now?", "", background=False)

    assert provider.prompts[1].turns == (
        ChatTurn(Role.USER, "how are you?"),
        ChatTurn(Role.ASSISTANT, "fine"),
        ChatTurn(Role.USER, "and now?"),
    )


async def test_the_history_sent_respects_the_token_budget_and_skips_failed_and_empty_replies(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock
) -> None:
    provider = ScriptedProvider()
    # estimate_tokens: 40 characters are 14 tokens, "four" is 5.
    replies = make_replies(provider, history_token_budget=35)
    conversation = await add_conversation(storage, clock)
    when = clock()
    await add_messages(
        storage,
        message_in(conversation, Role.USER, "1" * 40, when),
        message_in(conversation, Role.ASSISTANT, "2" * 40, when),
        message_in(conversation, Role.USER, "3" * 40, when),
        message_in(conversation, Role.ASSISTANT, "broken", when, status=MessageStatus.FAILED),
        message_in(conversation, Role.ASSISTANT, "", when, status=MessageStatus.CANCELLED),
    )

    await replies.send(ALICE, conversation.id, "four", "", background=False)

    assert provider.prompts[0].turns == (
        ChatTurn(Role.ASSISTANT, "2" * 40),
        ChatTurn(Role.USER, "3" * 40),
        ChatTurn(Role.USER, "four"),
    )


async def test_the_history_reads_at_most_the_configured_number_of_messages(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock
) -> None:
    provider = ScriptedProvider()
    replies = make_replies(provider, history_max_messages=2)
    conversation = await add_conversation(storage, clock)
    when = clock()
    await add_messages(storage, *(message_in(conversation, Role.USER, f"m{i}", when) for i in range(5)))

    await replies.send(ALICE, conversation.id, "last", "", background=False)

    assert [t.content for t in provider.prompts[0].turns] == ["m3", "m4", "last"]


# ---------------------------------------------------------------------------------------------- fencing


async def paused_reply(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock
) -> tuple[Replies, ScriptedProvider, Message, asyncio.Task[list[ReplyEvent]]]:
    """A reply on replica A that wrote "ab" and flushed it, then A stopped (its flusher, and the model, held):
    a stop-the-world pause, or a partition from the database."""
    provider = ScriptedProvider(["ab", "cd", "ef"], pause_after=1)
    here = make_replies(provider, replica_id="replica-a")
    conversation = await add_conversation(storage, clock)
    events = here.stream(ALICE, conversation.id, "hi", "")
    started = await next_event(events)
    assert isinstance(started, Started)
    reading = asyncio.ensure_future(collect(events))
    await wait_for(provider.held)
    await here.generations.tick()  # flushed; no tick runs by itself here, as if A were paused from now on
    return here, provider, started.assistant_message, reading


async def test_a_paused_replica_that_lost_its_lease_writes_nothing_when_it_resumes(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock
) -> None:
    """Finding "fencing": a paused replica came back and overwrote a reply another replica had ended."""
    here, provider, reply, reading = await paused_reply(make_replies, storage, clock)
    sweeper = make_replies(ScriptedProvider(), replica_id="replica-b", max_continuations=0)
    clock.advance(11)  # past the 10 s lease
    await sweeper.generations.tick(sweep=True)
    interrupted = storage.message(reply.id)
    assert interrupted is not None
    assert (interrupted.status, interrupted.content) == (MessageStatus.INTERRUPTED, "ab")

    provider.release.set()  # A resumes: its model finishes the reply, and A tries to store it
    events = await bounded(reading)

    assert storage.message(reply.id) == interrupted  # untouched: a terminal state is final
    assert storage.state.endings == [(reply.id, MessageStatus.INTERRUPTED)]
    assert ended(events) == interrupted  # A's own reader ends with what is stored, not with A's version
    assert here.in_flight == 0


async def test_a_resumed_replica_learns_of_its_lost_lease_on_its_next_flush_and_stops(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock
) -> None:
    here, provider, reply, reading = await paused_reply(make_replies, storage, clock)
    sweeper = make_replies(ScriptedProvider(), replica_id="replica-b", max_continuations=0)
    clock.advance(11)
    await sweeper.generations.tick(sweep=True)
    interrupted = storage.message(reply.id)

    await here.generations.tick()  # A's first flush after the pause is refused: fenced

    events = await bounded(reading)
    assert ended(events) == interrupted
    assert storage.state.endings == [(reply.id, MessageStatus.INTERRUPTED)]
    assert provider.release.is_set() is False  # the model was stopped, not waited for


async def test_a_replica_with_a_valid_lease_survives_a_pause_shorter_than_the_lease(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock
) -> None:
    _, provider, reply, reading = await paused_reply(make_replies, storage, clock)
    sweeper = make_replies(ScriptedProvider(), replica_id="replica-b")
    clock.advance(5)
    await sweeper.generations.tick(sweep=True)

    provider.release.set()
    events = await bounded(reading)

    assert ended(events).status is MessageStatus.COMPLETED
    assert storage.message(reply.id) == ended(events)
    assert text_of(events) == "abcdef"


async def test_a_failed_reply_is_the_same_error_for_live_readers_late_readers_and_retries(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock
) -> None:
    """Finding F11: a model failure was UNAVAILABLE live but OK + completed{FAILED} on a retry."""
    replies = make_replies(ScriptedProvider(["one", " two", " three"], fail_after=2))
    conversation = await add_conversation(storage, clock)
    live: list[ReplyEvent] = []
    with pytest.raises(ModelFailed) as live_error:
        await collect(replies.stream(ALICE, conversation.id, "hi", "req-1"), into=live)
    reply = live[0]
    assert isinstance(reply, Started)

    late: list[ReplyEvent] = []
    with pytest.raises(ModelFailed) as late_error:
        await collect(replies.resume(ALICE, reply.assistant_message.id, 0), into=late)
    retried: list[ReplyEvent] = []
    with pytest.raises(ModelFailed) as retry_error:
        await collect(replies.stream(ALICE, conversation.id, "hi", "req-1"), into=retried)
    with pytest.raises(ModelFailed):
        await replies.send(ALICE, conversation.id, "hi", "req-1", background=False)

    assert text_of(live) == text_of(late) == text_of(retried) == "one two"
    assert live_error.value.message == late_error.value.message == retry_error.value.message
    assert late_error.value.reason == retry_error.value.reason == "MODEL_FAILED"
    stored = storage.message(reply.assistant_message.id)
    assert stored is not None
    assert (stored.status, stored.error_reason) == (MessageStatus.FAILED, "MODEL_FAILED")


async def test_model_text_the_database_cannot_store_is_cleaned_before_anyone_sees_it(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock
) -> None:
    """Finding F4: NUL and an emoji split into two surrogate escapes (across two pieces) killed the reply."""
    replies = make_replies(ScriptedProvider(["nul\x00 ", "\ud83d", "\ude00", " lone \udc00"]))
    conversation = await add_conversation(storage, clock)

    events = await collect(replies.stream(ALICE, conversation.id, "hi", ""))

    assert text_of(events) == "nul\ufffd 😀 lone \ufffd"
    assert ended(events).content == text_of(events)
    assert ended(events).status is MessageStatus.COMPLETED


async def test_a_reply_longer_than_the_limit_is_cut_there_and_completes(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock
) -> None:
    """Finding F15: nothing bounded a reply's size."""
    replies = make_replies(ScriptedProvider(["x" * 40] * 10), max_reply_chars=100)
    conversation = await add_conversation(storage, clock)

    events = await collect(replies.stream(ALICE, conversation.id, "hi", ""))

    assert text_of(events) == "x" * 100
    assert (ended(events).status, ended(events).finish_reason) == (MessageStatus.COMPLETED, FinishReason.LENGTH)


async def test_a_cancel_that_arrives_before_the_model_is_called_still_cancels(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock
) -> None:
    provider = ScriptedProvider()
    replies = make_replies(provider)
    conversation = await add_conversation(storage, clock)
    reply = await add_reply_in_flight(
        storage, clock, conversation, lease_owner=REPLICA, lease_expires_at=clock() + timedelta(seconds=10)
    )
    prompt = Prompt(MODEL, (ChatTurn(Role.USER, "question"),), 16)
    generation = replies.generations.launch(reply, prompt, Lease(REPLICA, 1, clock() + timedelta(seconds=10)))

    generation.stop(MessageStatus.CANCELLED)  # before its task first ran

    outcome = await bounded(generation.ended())
    assert outcome.message.status is MessageStatus.CANCELLED
    assert provider.calls == 0
    assert storage.message(reply.id) == outcome.message


async def test_a_caller_cancelled_right_after_the_commit_still_gets_its_reply_generated(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock
) -> None:
    """Finding F13: a deadline that expired between the commit of the user message and the start of the reply
    left an assistant row STREAMING with nothing generating it."""
    replies = make_replies(ScriptedProvider())
    conversation = await add_conversation(storage, clock)
    sending = asyncio.ensure_future(replies.send(ALICE, conversation.id, "hi", "req-13", background=False))

    await stored_state(storage, lambda: len(storage.messages_in(conversation.id)) == 2)  # just committed
    sending.cancel()  # the caller's deadline, as the unit of work is being left

    await stored_state(storage, lambda: all(m.status.is_final for m in storage.messages_in(conversation.id)))
    _, reply = storage.messages_in(conversation.id)
    assert (reply.status, reply.content) == (MessageStatus.COMPLETED, "Hello, wörld 🙂")
    with pytest.raises(asyncio.CancelledError):
        await sending


# ---------------------------------------------------------------------------------------------- continuation


def assembled(events: Sequence[ReplyEvent], text: str = "") -> str:
    """The text a client ends with (from `text`): deltas appended, each rewind cutting back to its offset."""
    for event in events:
        if isinstance(event, Rewind):
            text = text[: event.offset]
        elif isinstance(event, Delta):
            assert event.offset == len(text), (event, text)
            text += event.text
    return text


async def dead_replicas_reply(storage: FakeStorage, clock: FakeClock, content: str = "Hello, ") -> Message:
    conversation = await add_conversation(storage, clock)
    return await add_reply_in_flight(
        storage, clock, conversation, content=content, lease_expires_at=clock() - timedelta(seconds=1)
    )


async def test_a_reply_whose_replica_stopped_is_continued_here_to_completion(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock
) -> None:
    provider = ScriptedProvider()  # "Hello", ", ", "wörld 🙂"
    replies = make_replies(provider)
    reply = await dead_replicas_reply(storage, clock)

    await replies.generations.tick(sweep=True)
    events = await collect(replies.resume(ALICE, reply.id, 0))

    final = ended(events)
    assert (final.status, final.content) == (MessageStatus.COMPLETED, "Hello, wörld 🙂")
    assert assembled(events) == final.content == storage.message(reply.id).content  # type: ignore[union-attr]
    assert final.continued_at == ((2, len("Hello, ")),)
    (prompt,) = provider.prompts
    assert prompt.prefix == "Hello, "
    assert [turn.content for turn in prompt.turns if turn.role is Role.USER] == ["question"]


async def test_a_reader_of_the_stopped_replica_is_rewound_to_where_the_continuation_began(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock
) -> None:
    """It had read "Hello, wö" from the dead replica's memory; only "Hello, " was stored."""
    replies = make_replies(ScriptedProvider())
    reply = await dead_replicas_reply(storage, clock)
    await replies.generations.tick(sweep=True)

    events = await collect(replies.resume(ALICE, reply.id, len("Hello, wö"), generation=1))

    assert events[1] == Rewind(len("Hello, "), 2)
    assert assembled(events, "Hello, wö") == ended(events).content == "Hello, wörld 🙂"


async def test_a_reader_following_here_is_rewound_when_another_replica_continues_the_reply_later(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock
) -> None:
    """It had read "Hello, wö" from the replica that then stopped; only "Hello, " was stored. It resumes here
    before anyone took the reply over (its lease has not expired yet) and follows it through the database; the
    continuation writes other words: it must be rewound to where the continuation began, not get them past its
    own never-stored text."""
    replies = make_replies(ScriptedProvider(("Hello", ", ", "there")))
    conversation = await add_conversation(storage, clock)
    reply = await add_reply_in_flight(
        storage, clock, conversation, content="Hello, ", lease_expires_at=clock() + timedelta(seconds=5)
    )
    following = asyncio.ensure_future(collect(replies.resume(ALICE, reply.id, len("Hello, wö"), generation=1)))
    for _ in range(1000):  # until it follows the stored reply (turns of the event loop, not time)
        if reply.id in replies._remote._watchers:
            break
        await asyncio.sleep(0)
    assert not following.done()

    clock.advance(10)  # the other replica's lease expires
    await replies.generations.tick(sweep=True)  # and this one continues the reply
    events = await bounded(following)

    assert Rewind(len("Hello, "), 2) in events
    assert assembled(events, "Hello, wö") == ended(events).content == "Hello, there"
    assert storage.message(reply.id).content == "Hello, there"  # type: ignore[union-attr]


async def test_a_reader_that_already_follows_the_continuation_is_not_rewound(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock
) -> None:
    replies = make_replies(ScriptedProvider())
    reply = await dead_replicas_reply(storage, clock)
    await replies.generations.tick(sweep=True)

    events = await collect(replies.resume(ALICE, reply.id, len("Hello, wö"), generation=2))

    assert not any(isinstance(e, Rewind) for e in events)
    assert text_of(events) == "rld 🙂"


async def test_of_replicas_racing_to_take_a_reply_over_exactly_one_continues_it(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock
) -> None:
    providers = [ScriptedProvider(), ScriptedProvider()]
    here = make_replies(providers[0], replica_id="replica-a")
    there = make_replies(providers[1], replica_id="replica-c")
    reply = await dead_replicas_reply(storage, clock)

    await asyncio.gather(here.generations.tick(sweep=True), there.generations.tick(sweep=True))
    final = ended(await collect(here.resume(ALICE, reply.id, 0)))

    assert sum(p.calls for p in providers) == 1
    assert final.status is MessageStatus.COMPLETED and len(final.continued_at) == 1
    assert storage.state.endings == [(reply.id, MessageStatus.COMPLETED)]


async def test_a_reply_continued_the_most_times_allowed_ends_interrupted(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock
) -> None:
    replies = make_replies(ScriptedProvider(), max_continuations=2)
    reply = await dead_replicas_reply(storage, clock)
    async with storage.unit_of_work() as uow:  # it was continued twice already, and that replica died too
        await uow.messages.take_over(reply, Lease("replica-x", 0, clock() - timedelta(seconds=1)), now=clock())
        again = await uow.messages.get(reply.id)
        assert again is not None
        await uow.messages.take_over(again, Lease("replica-y", 0, clock() - timedelta(seconds=1)), now=clock())
        await uow.commit()

    await replies.generations.tick(sweep=True)

    stored = storage.message(reply.id)
    assert stored is not None
    assert (stored.status, stored.content, len(stored.continued_at)) == (MessageStatus.INTERRUPTED, "Hello, ", 2)


async def test_a_model_that_cannot_continue_leaves_the_reply_interrupted(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock
) -> None:
    provider = ScriptedProvider()
    provider.continues = False
    replies = make_replies(provider)
    reply = await dead_replicas_reply(storage, clock)

    await replies.generations.tick(sweep=True)

    stored = storage.message(reply.id)
    assert stored is not None
    assert (stored.status, stored.error_message) == (MessageStatus.INTERRUPTED, ABANDONED_MESSAGE)
    assert provider.calls == 0


async def test_a_paused_replica_whose_reply_was_continued_hands_its_readers_over(
    make_replies: MakeReplies, storage: FakeStorage, clock: FakeClock
) -> None:
    """A wrote "ab" (stored) then paused; B continued it ("cd", "ef"); A woke up and wrote "XXYY" that nobody
    stored. A's reader ends with B's reply, told to drop what it got past "ab"."""
    provider = ScriptedProvider(["ab", "XX", "YY"], pause_after=1)
    here = make_replies(provider, replica_id="replica-a")
    conversation = await add_conversation(storage, clock)
    events = here.stream(ALICE, conversation.id, "hi", "")
    started = await next_event(events)
    assert isinstance(started, Started)
    reading = asyncio.ensure_future(collect(events))
    await wait_for(provider.held)
    await here.generations.tick()  # "ab" stored; then A is paused past its lease
    there = make_replies(ScriptedProvider(["ab", "cd", "ef"]), replica_id="replica-b")
    clock.advance(11)
    await there.generations.tick(sweep=True)  # B takes it over and continues it

    provider.release.set()  # A wakes up
    received = await bounded(reading)

    stored = storage.message(started.assistant_message.id)
    assert stored is not None
    assert (stored.status, stored.content) == (MessageStatus.COMPLETED, "abcdef")
    assert Rewind(2, 2) in received
    assert assembled(received) == "abcdef" and ended(received) == stored
