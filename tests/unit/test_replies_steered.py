"""The generation core's additions for coaching: steered replies, unprompted replies and fixed answers."""

from __future__ import annotations

import asyncio

import pytest

from service.domain import FailedPrecondition, InvalidArgument, MessageStatus, PermissionDenied, Principal, Role
from service.replies import Replies, Started
from tests.fakes import FakeClock, FakeStorage, ScriptedProvider
from tests.unit.test_replies import ALICE, MODEL, add_conversation, collect, ended, text_of
from tests.wired import Wire

BOB = Principal("bob")
STEER = "Close the session with a summary."


@pytest.fixture
def provider() -> ScriptedProvider:
    return ScriptedProvider(["Well", " done!"], models=(MODEL,))


@pytest.fixture
async def replies(wired: Wire, provider: ScriptedProvider) -> Replies:
    replies = wired(provider).replies
    await replies.start()
    return replies


async def test_a_steer_is_the_last_thing_the_model_reads_and_is_never_stored(
    replies: Replies, provider: ScriptedProvider, storage: FakeStorage, clock: FakeClock
) -> None:
    conversation = await add_conversation(storage, clock, persona="english_buddy")

    events = await collect(replies.stream(ALICE, conversation.id, "yes", "", steer=STEER))

    turns = provider.prompts[0].turns
    assert [t.role for t in turns] == [Role.SYSTEM, Role.USER, Role.SYSTEM]
    assert turns[1].content == "yes"
    assert turns[-1].content == STEER
    assert [m.content for m in storage.messages_in(conversation.id)] == ["yes", text_of(events)]


async def test_an_unprompted_reply_stores_no_user_message(
    replies: Replies, provider: ScriptedProvider, storage: FakeStorage, clock: FakeClock
) -> None:
    conversation = await add_conversation(storage, clock)
    await collect(replies.stream(ALICE, conversation.id, "Hello", ""))

    events = await collect(replies.stream_unprompted(ALICE, conversation.id, STEER))

    first = events[0]
    assert isinstance(first, Started) and first.user_message is None
    assert ended(events).status is MessageStatus.COMPLETED
    assert [m.role for m in storage.messages_in(conversation.id)] == [Role.USER, Role.ASSISTANT, Role.ASSISTANT]
    assert [t.role for t in provider.prompts[-1].turns] == [Role.USER, Role.ASSISTANT, Role.SYSTEM]


async def test_an_unprompted_reply_with_a_known_request_id_attaches_to_it(
    replies: Replies, provider: ScriptedProvider, storage: FakeStorage, clock: FakeClock
) -> None:
    conversation = await add_conversation(storage, clock)
    first = ended(await collect(replies.stream(ALICE, conversation.id, "yes", "closing-1", steer=STEER)))

    again = ended(await collect(replies.stream_unprompted(ALICE, conversation.id, STEER, "closing-1")))

    assert again.id == first.id
    assert provider.calls == 1
    assert len(storage.messages_in(conversation.id)) == 2


async def test_a_request_id_from_another_conversation_is_refused(
    replies: Replies, storage: FakeStorage, clock: FakeClock
) -> None:
    one = await add_conversation(storage, clock)
    other = await add_conversation(storage, clock)
    await collect(replies.stream_unprompted(ALICE, one.id, STEER, "closing-2"))

    with pytest.raises(InvalidArgument):
        await collect(replies.stream_unprompted(ALICE, other.id, STEER, "closing-2"))


async def test_record_stores_a_fixed_answer_without_the_model(
    replies: Replies, provider: ScriptedProvider, storage: FakeStorage, clock: FakeClock
) -> None:
    conversation = await add_conversation(storage, clock)

    user, answer = await replies.record(ALICE, conversation.id, "I have to go", "Shall we wrap up?")

    assert provider.calls == 0
    assert (user.role, user.content) == (Role.USER, "I have to go")
    assert (answer.role, answer.content, answer.status) == (
        Role.ASSISTANT,
        "Shall we wrap up?",
        MessageStatus.COMPLETED,
    )
    assert [m.id for m in storage.messages_in(conversation.id)] == [user.id, answer.id]


async def test_record_keeps_isolation_and_one_reply_at_a_time(
    wired: Wire, storage: FakeStorage, clock: FakeClock
) -> None:
    held = ScriptedProvider(["a", "b"], models=(MODEL,), pause_after=1)
    replies = wired(held).replies
    conversation = await add_conversation(storage, clock)

    with pytest.raises(PermissionDenied):
        await replies.record(BOB, conversation.id, "hi", "hello")
    events = replies.stream(ALICE, conversation.id, "tell me", "")
    await anext(events)
    async with asyncio.timeout(5):
        await held.held.wait()
    with pytest.raises(FailedPrecondition):
        await replies.record(ALICE, conversation.id, "I have to go", "Shall we wrap up?")
    held.release.set()
    await collect(events)
