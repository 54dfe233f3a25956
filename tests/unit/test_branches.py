"""The message tree (regenerate, edit, corrections, branch switches, message deletes, and listing, search, export and
continuation along a branch) as use cases against the in-memory storage and a scripted model."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from service.branches import Branches
from service.chat import ConversationFields, Conversations
from service.domain import (
    Conversation,
    FailedPrecondition,
    InvalidArgument,
    Lease,
    Message,
    MessageStatus,
    NotFound,
    PermissionDenied,
    Principal,
    Role,
    new_id,
)
from service.export import ExportFormat
from service.pagination import PageTokens
from service.replies import Delta, Ended, Replies, ReplyEvent, Started
from tests.fakes import FakeClock, FakeStorage, ScriptedProvider
from tests.tree_machine import Listed, Made, NumberedProvider, TreeMachine, turns_of
from tests.wired import wire

ALICE = Principal("alice")
BOB = Principal("bob")
WAIT = 5.0


@dataclass
class Tree:
    """The use cases wired as `service.app.build` does, over one storage and one provider."""

    storage: FakeStorage
    clock: FakeClock
    provider: ScriptedProvider
    replies: Replies
    conversations: Conversations
    branches: Branches

    async def conversation(self, principal: Principal = ALICE) -> Conversation:
        return await self.conversations.create(principal, ConversationFields(model="scripted"))

    async def send(self, conversation: Conversation, text: str) -> tuple[Message, Message]:
        async with asyncio.timeout(WAIT):
            return await self.replies.send(ALICE, conversation.id, text, "", background=False)

    async def listed(self, conversation: Conversation, branch: str = "", size: int = 2) -> list[Message]:
        """Every message of a branch, paging `size` at a time."""
        found: list[Message] = []
        token = ""
        while True:
            page = await self.conversations.messages(ALICE, conversation.id, size, token, branch)
            found += page.items
            token = page.next_page_token
            if not token:
                return found

    async def current(self, conversation: Conversation) -> str:
        return (await self.conversations.get(ALICE, conversation.id)).current_message_id

    async def close(self) -> None:
        await self.replies.close(0)


def wired_tree(storage: FakeStorage, clock: FakeClock, provider: ScriptedProvider) -> Tree:
    built = wire(storage, clock, provider)
    return Tree(storage, clock, provider, built.replies, built.conversations, built.branches)


@pytest.fixture
async def tree() -> AsyncIterator[Tree]:
    built = wired_tree(FakeStorage(), FakeClock(), NumberedProvider())
    yield built
    await built.close()


async def collect(events: AsyncIterator[ReplyEvent]) -> list[ReplyEvent]:
    async with asyncio.timeout(WAIT):
        return [event async for event in events]


def ended(events: list[ReplyEvent]) -> Message:
    last = events[-1]
    assert isinstance(last, Ended)
    return last.message


def started(events: list[ReplyEvent]) -> Started:
    first = events[0]
    assert isinstance(first, Started)
    return first


def texts(messages: list[Message]) -> list[str]:
    return [m.content for m in messages]


# ---------------------------------------------------------------------------------------------- a chain


async def test_sent_messages_make_one_branch_each_after_its_parent(tree: Tree) -> None:
    conversation = await tree.conversation()
    first, reply = await tree.send(conversation, "hello")
    second, _ = await tree.send(conversation, "again")

    listed = await tree.listed(conversation)

    assert texts(listed) == ["hello", "reply 1", "again", "reply 2"]
    assert [m.parent_id for m in listed] == ["", first.id, reply.id, second.id]
    assert all(m.siblings is not None and (m.siblings.count, m.siblings.index) == (1, 0) for m in listed)
    assert await tree.current(conversation) == listed[-1].id


# ---------------------------------------------------------------------------------------------- regenerate


async def test_regenerate_adds_a_sibling_reply_that_becomes_current(tree: Tree) -> None:
    conversation = await tree.conversation()
    await tree.send(conversation, "hello")
    question, first = await tree.send(conversation, "tell me more")

    events = await collect(tree.replies.regenerate(ALICE, first.id, "regen-1"))

    again = ended(events)
    assert started(events).user_message == question
    assert (again.content, again.parent_id, again.status) == ("reply 3", question.id, MessageStatus.COMPLETED)
    assert "".join(e.text for e in events if isinstance(e, Delta)) == again.content
    listed = await tree.listed(conversation)
    assert texts(listed) == ["hello", "reply 1", "tell me more", "reply 3"]
    assert listed[-1].siblings is not None
    assert (listed[-1].siblings.count, listed[-1].siblings.index, listed[-1].siblings.previous_id) == (2, 1, first.id)
    # The model saw the branch up to the question, not the reply it replaces.
    assert turns_of(tree.provider.prompts[-1]) == [
        ("user", "hello"),
        ("assistant", "reply 1"),
        ("user", "tell me more"),
    ]


async def test_regenerate_by_the_user_message_answers_it_again(tree: Tree) -> None:
    conversation = await tree.conversation()
    question, first = await tree.send(conversation, "hello")

    again = ended(await collect(tree.replies.regenerate(ALICE, question.id, "")))

    assert again.parent_id == question.id and again.id != first.id
    siblings = (await tree.branches.siblings(ALICE, first.id, 0, "")).items
    assert [m.id for m in siblings] == [first.id, again.id]


async def test_a_retried_regenerate_attaches_to_the_reply_it_made(tree: Tree) -> None:
    conversation = await tree.conversation()
    _, first = await tree.send(conversation, "hello")

    made = ended(await collect(tree.replies.regenerate(ALICE, first.id, "same")))
    retried = ended(await collect(tree.replies.regenerate(ALICE, first.id, "same")))

    assert retried.id == made.id and tree.provider.calls == 2
    assert len(tree.storage.messages_in(conversation.id)) == 3
    question, _ = await tree.send(conversation, "next")
    with pytest.raises(InvalidArgument):  # the same request id for another reply
        await collect(tree.replies.regenerate(ALICE, question.id, "same"))


async def test_a_request_id_of_a_sent_message_is_not_a_regenerate(tree: Tree) -> None:
    conversation = await tree.conversation()
    _, reply = await tree.replies.send(ALICE, conversation.id, "hello", "sent-1", background=False)

    with pytest.raises(InvalidArgument) as error:
        await collect(tree.replies.regenerate(ALICE, reply.id, "sent-1"))

    assert error.value.violations[0].field == "request_id"


# ---------------------------------------------------------------------------------------------- edit


async def test_editing_a_user_message_branches_and_keeps_the_old_branch(tree: Tree) -> None:
    conversation = await tree.conversation()
    await tree.send(conversation, "hello")
    question, _ = await tree.send(conversation, "what is a cat?")
    await tree.send(conversation, "and a dog?")

    events = await collect(tree.replies.edit(ALICE, question.id, "what is a narwhal?", "edit-1"))

    edited = started(events).user_message
    assert edited is not None and (edited.content, edited.parent_id) == ("what is a narwhal?", question.parent_id)
    assert texts(await tree.listed(conversation)) == ["hello", "reply 1", "what is a narwhal?", "reply 4"]
    assert turns_of(tree.provider.prompts[-1]) == [
        ("user", "hello"),
        ("assistant", "reply 1"),
        ("user", "what is a narwhal?"),
    ]
    old = await tree.listed(conversation, branch=question.id)
    assert texts(old) == ["hello", "reply 1", "what is a cat?", "reply 2", "and a dog?", "reply 3"]
    assert old[2].siblings is not None and (old[2].siblings.count, old[2].siblings.next_id) == (2, edited.id)
    # A retry attaches; the same request id with other text is refused.
    again = await collect(tree.replies.edit(ALICE, question.id, "what is a narwhal?", "edit-1"))
    assert started(again).user_message == edited and tree.provider.calls == 4
    with pytest.raises(InvalidArgument):
        await collect(tree.replies.edit(ALICE, question.id, "what is an owl?", "edit-1"))


async def test_editing_the_first_message_starts_a_second_first_message(tree: Tree) -> None:
    conversation = await tree.conversation()
    first, _ = await tree.send(conversation, "hello")

    edited = started(await collect(tree.replies.edit(ALICE, first.id, "hi", ""))).user_message

    assert edited is not None and edited.parent_id == ""
    assert texts(await tree.listed(conversation)) == ["hi", "reply 2"]
    assert turns_of(tree.provider.prompts[-1]) == [("user", "hi")]


async def test_correcting_a_reply_adds_a_completed_sibling_without_calling_the_model(tree: Tree) -> None:
    conversation = await tree.conversation()
    question, reply = await tree.send(conversation, "2 + 2?")

    events = await collect(tree.replies.edit(ALICE, reply.id, "4", "fix-1"))

    correction = ended(events)
    assert started(events).user_message == question
    assert [type(e) for e in events] == [Started, Delta, Ended]
    assert (correction.content, correction.status, correction.parent_id) == ("4", MessageStatus.COMPLETED, question.id)
    assert tree.provider.calls == 1
    assert tree.storage.message(reply.id) == reply  # the model's text stays as it was
    assert texts(await tree.listed(conversation)) == ["2 + 2?", "4"]
    assert ended(await collect(tree.replies.edit(ALICE, reply.id, "4", "fix-1"))).id == correction.id
    # The next reply's model sees the correction.
    await tree.send(conversation, "and 3 + 3?")
    assert turns_of(tree.provider.prompts[-1]) == [("user", "2 + 2?"), ("assistant", "4"), ("user", "and 3 + 3?")]


async def test_an_edit_needs_text(tree: Tree) -> None:
    conversation = await tree.conversation()
    question, _ = await tree.send(conversation, "hello")

    with pytest.raises(InvalidArgument) as error:
        await collect(tree.replies.edit(ALICE, question.id, "  ", ""))

    assert error.value.violations[0].field == "content"


# ---------------------------------------------------------------------------------------------- one reply at a time


async def paused(tree: Tree, conversation: Conversation) -> tuple[Message, asyncio.Task[list[ReplyEvent]]]:
    """A reply generating (the model held after its first piece), and the task following it."""
    tree.provider.pause_after = 1
    events = tree.replies.stream(ALICE, conversation.id, "slow one", "")
    first = await anext(events)
    assert isinstance(first, Started)
    following = asyncio.ensure_future(collect(events))
    async with asyncio.timeout(WAIT):
        await tree.provider.held.wait()
    return first.assistant_message, following


async def test_nothing_changes_the_branches_while_a_reply_generates(tree: Tree) -> None:
    conversation = await tree.conversation()
    question, reply = await tree.send(conversation, "hello")
    generating, following = await paused(tree, conversation)

    refusals = [
        collect(tree.replies.regenerate(ALICE, reply.id, "")),
        collect(tree.replies.edit(ALICE, question.id, "hi", "")),
        collect(tree.replies.edit(ALICE, reply.id, "fixed", "")),
        collect(tree.replies.stream(ALICE, conversation.id, "another", "")),
        tree.branches.set_current(ALICE, conversation.id, reply.id),
    ]
    for refused in refusals:
        with pytest.raises(FailedPrecondition):
            await refused

    tree.provider.release.set()
    assert ended(await following).status is MessageStatus.COMPLETED
    assert await tree.current(conversation) == generating.id


# ---------------------------------------------------------------------------------------------- switching


async def test_switching_to_a_message_selects_the_newest_leaf_under_it(tree: Tree) -> None:
    conversation = await tree.conversation()
    question, first = await tree.send(conversation, "hello")
    await tree.send(conversation, "deeper")
    second = ended(await collect(tree.replies.regenerate(ALICE, first.id, "")))

    on_first = await tree.branches.set_current(ALICE, conversation.id, first.id)
    assert texts(await tree.listed(conversation)) == ["hello", "reply 1", "deeper", "reply 2"]
    assert on_first.current_message_id == (await tree.listed(conversation))[-1].id
    on_question = await tree.branches.set_current(ALICE, conversation.id, question.id)  # not a leaf: the newest
    assert on_question.current_message_id == second.id
    assert await tree.current(conversation) == second.id


async def test_switching_checks_the_message_is_the_conversations(tree: Tree) -> None:
    conversation, other = await tree.conversation(), await tree.conversation()
    _, elsewhere = await tree.send(other, "hello")

    for message_id in (elsewhere.id, new_id()):
        with pytest.raises(InvalidArgument) as error:
            await tree.branches.set_current(ALICE, conversation.id, message_id)
        assert error.value.violations[0].field == "message_id"
    with pytest.raises(PermissionDenied):
        await tree.branches.set_current(BOB, other.id, elsewhere.id)


# ---------------------------------------------------------------------------------------------- deleting


async def test_deleting_a_message_deletes_what_follows_and_moves_the_current_branch(tree: Tree) -> None:
    conversation = await tree.conversation()
    question, first = await tree.send(conversation, "hello")
    await tree.send(conversation, "deeper")
    second = ended(await collect(tree.replies.regenerate(ALICE, first.id, "")))
    await tree.branches.set_current(ALICE, conversation.id, first.id)

    after, deleted = await tree.branches.delete(ALICE, first.id)

    assert deleted == 3
    assert after.current_message_id == second.id  # the newest leaf left under the deleted one's parent
    assert texts(await tree.listed(conversation)) == ["hello", "reply 3"]
    after, deleted = await tree.branches.delete(ALICE, second.id)
    assert (after.current_message_id, deleted) == (question.id, 1)  # the parent, a leaf now
    assert texts(await tree.listed(conversation)) == ["hello"]
    _, reply = await tree.send(conversation, "again")  # goes on from there
    assert texts(await tree.listed(conversation)) == ["hello", "again", "reply 4"]
    after, _ = await tree.branches.delete(ALICE, question.id)
    assert after.current_message_id == "" and await tree.listed(conversation) == []
    with pytest.raises(NotFound):
        await tree.branches.delete(ALICE, reply.id)


async def test_deleting_a_branch_that_is_not_current_keeps_the_current_one(tree: Tree) -> None:
    conversation = await tree.conversation()
    _, first = await tree.send(conversation, "hello")
    second = ended(await collect(tree.replies.regenerate(ALICE, first.id, "")))

    after, _ = await tree.branches.delete(ALICE, first.id)

    assert after.current_message_id == second.id
    listed = await tree.listed(conversation)
    assert listed[-1].siblings is not None and listed[-1].siblings.count == 1


async def test_deleting_a_message_cancels_a_reply_generating_under_it_first(tree: Tree) -> None:
    conversation = await tree.conversation()
    question, _ = await tree.send(conversation, "hello")
    generating, following = await paused(tree, conversation)

    after, deleted = await tree.branches.delete(ALICE, question.id)

    assert deleted == 4 and after.current_message_id == ""
    final = ended(await following)
    assert (final.id, final.status) == (generating.id, MessageStatus.CANCELLED)
    assert (generating.id, MessageStatus.CANCELLED) in tree.storage.state.endings  # stored before it went
    assert tree.storage.messages_in(conversation.id) == []


async def test_another_users_message_cannot_be_touched(tree: Tree) -> None:
    conversation = await tree.conversation()
    question, reply = await tree.send(conversation, "hello")

    for attempt in (
        collect(tree.replies.regenerate(BOB, reply.id, "")),
        collect(tree.replies.edit(BOB, question.id, "mine", "")),
        tree.branches.delete(BOB, reply.id),
        tree.branches.siblings(BOB, reply.id, 0, ""),
    ):
        with pytest.raises(PermissionDenied):
            await attempt
    assert len(tree.storage.messages_in(conversation.id)) == 2


# ---------------------------------------------------------------------------------------------- listing


async def test_a_page_token_stays_on_its_branch_when_the_current_one_changes(tree: Tree) -> None:
    conversation = await tree.conversation()
    question, first = await tree.send(conversation, "hello")
    await tree.send(conversation, "deeper")
    page = await tree.conversations.messages(ALICE, conversation.id, 2, "")
    await collect(tree.replies.regenerate(ALICE, first.id, ""))

    rest = await tree.conversations.messages(ALICE, conversation.id, 10, page.next_page_token)

    assert texts([*page.items, *rest.items]) == ["hello", "reply 1", "deeper", "reply 2"]
    await tree.branches.delete(ALICE, first.id)
    with pytest.raises(FailedPrecondition):  # its branch is gone
        await tree.conversations.messages(ALICE, conversation.id, 10, page.next_page_token)
    with pytest.raises(InvalidArgument):  # a token of another branch's listing
        await tree.conversations.messages(ALICE, conversation.id, 10, page.next_page_token, question.id)


async def test_a_page_token_of_the_release_before_the_tree_goes_on_along_the_current_branch(tree: Tree) -> None:
    conversation, other = await tree.conversation(), await tree.conversation()
    await tree.send(conversation, "hello")
    await tree.send(conversation, "again")
    _, elsewhere = await tree.send(other, "elsewhere")
    scope, tokens = f"messages:alice:{conversation.id}", PageTokens(b"page secret")
    first = await tree.conversations.messages(ALICE, conversation.id, 2, "")
    position = tokens.decode(scope, first.next_page_token)
    assert position is not None

    before = await tree.conversations.messages(ALICE, conversation.id, 10, tokens.encode(scope, position[37:]))

    assert texts(before.items) == ["again", "reply 2"]  # a position alone, as the release before wrote it
    foreign = tokens.encode(scope, f"{elsewhere.id}|{position[37:]}")
    with pytest.raises(FailedPrecondition):  # pinned to a message of another conversation: never listed here
        await tree.conversations.messages(ALICE, conversation.id, 10, foreign)


async def test_search_covers_every_branch_and_says_which_hits_are_current(tree: Tree) -> None:
    conversation = await tree.conversation()
    question, _ = await tree.send(conversation, "tell me about narwhals")
    edited = started(await collect(tree.replies.edit(ALICE, question.id, "narwhals again", ""))).user_message
    assert edited is not None

    hits = (await tree.conversations.search(ALICE, "narwhals", 10, "")).items

    assert {hit.message.id: hit.on_current_branch for hit in hits} == {question.id: False, edited.id: True}


async def test_export_writes_the_current_branch_or_the_one_asked_for(tree: Tree) -> None:
    conversation = await tree.conversation()
    question, _ = await tree.send(conversation, "first try")
    await collect(tree.replies.edit(ALICE, question.id, "second try", ""))

    async def exported(branch: str = "") -> list[str]:
        pieces = tree.conversations.export(ALICE, conversation.id, ExportFormat.JSON, branch_message_id=branch)
        document = json.loads("".join([piece async for piece in pieces]))
        return [m["content"] for m in document["messages"]]

    assert await exported() == ["second try", "reply 2"]
    assert await exported(question.id) == ["first try", "reply 1"]
    with pytest.raises(InvalidArgument):
        await exported(new_id())


# ---------------------------------------------------------------------------------------------- continuation


async def test_a_continued_reply_sees_its_own_branch() -> None:
    """Another replica died writing a reply on a branch made by an edit; the replica continuing it gives the model
    that branch, never the messages of the branch the edit left."""
    storage, clock = FakeStorage(), FakeClock()
    tree = wired_tree(storage, clock, ScriptedProvider(["Hello", ", ", "wörld"]))
    try:
        conversation = await tree.conversation()
        question, _ = await tree.send(conversation, "one")
        await collect(tree.replies.edit(ALICE, question.id, "two", ""))
        async with storage.unit_of_work() as uow:  # "three" and the start of its reply, as the dead replica stored them
            current = await uow.conversations.get(conversation.id)
            assert current is not None
            asked = Message(
                id=new_id(),
                conversation_id=conversation.id,
                owner="alice",
                role=Role.USER,
                content="three",
                status=MessageStatus.COMPLETED,
                create_time=clock(),
                update_time=clock(),
                parent_id=current.current_message_id,
            )
            reply = dataclasses.replace(
                asked, id=new_id(), role=Role.ASSISTANT, content="Hello", status=MessageStatus.STREAMING,
                model="scripted", parent_id=asked.id,
            )  # fmt: skip
            await uow.messages.add(asked)
            await uow.messages.add(reply, lease=Lease("replica-b", 1, clock() + timedelta(seconds=1)))
            await uow.conversations.set_current(conversation.id, reply.id, clock())
            await uow.commit()
        clock.advance(2)

        await tree.replies.generations.sweep()
        final = ended(await collect(tree.replies.resume(ALICE, reply.id, 0)))

        assert (final.status, final.content) == (MessageStatus.COMPLETED, "Hello, wörld")
        prompt = tree.provider.prompts[-1]
        assert prompt.prefix == "Hello"
        assert turns_of(prompt) == [("user", "two"), ("assistant", "Hello, wörld"), ("user", "three")]
    finally:
        await tree.close()


# ---------------------------------------------------------------------------------------------- the property


class UseCaseDriver:
    """TreeDriver over the use cases and the fakes."""

    def __init__(self, tree: Tree) -> None:
        self.tree = tree
        self.prompts = tree.provider.prompts
        self.conversation: Conversation | None = None

    async def _conversation(self) -> Conversation:
        if self.conversation is None:
            self.conversation = await self.tree.conversation()
        return self.conversation

    async def send(self, text: str) -> Made:
        user, reply = await self.tree.send(await self._conversation(), text)
        return Made(user.id, reply.id, reply.content)

    async def regenerate(self, message_id: str) -> Made:
        reply = ended(await collect(self.tree.replies.regenerate(ALICE, message_id, new_id())))
        return Made(reply.id, reply.id, reply.content)

    async def edit(self, message_id: str, text: str, *, correction: bool) -> Made:
        events = await collect(self.tree.replies.edit(ALICE, message_id, text, new_id()))
        head, last = started(events), ended(events)
        if correction:
            return Made(last.id)
        assert head.user_message is not None
        return Made(head.user_message.id, last.id, last.content)

    async def switch(self, message_id: str) -> str:
        conversation = await self._conversation()
        return (await self.tree.branches.set_current(ALICE, conversation.id, message_id)).current_message_id

    async def delete(self, message_id: str) -> tuple[str, int]:
        conversation, deleted = await self.tree.branches.delete(ALICE, message_id)
        return conversation.current_message_id, deleted

    async def branch(self) -> list[Listed]:
        listed = await self.tree.listed(await self._conversation())
        return [listing(m) for m in listed]

    async def current(self) -> str:
        return await self.tree.current(await self._conversation())

    async def search(self, word: str) -> dict[str, bool]:
        hits = (await self.tree.conversations.search(ALICE, word, 1000, "")).items
        return {hit.message.id: hit.on_current_branch for hit in hits}

    async def close(self) -> None:
        await self.tree.close()


def listing(m: Message) -> Listed:
    place = m.siblings
    assert place is not None
    return Listed(
        m.id, m.parent_id, m.role.value, m.content, place.count, place.index, place.previous_id, place.next_id
    )


def test_the_tree_stays_consistent_over_any_sequence_of_steps() -> None:
    def machine() -> TreeMachine:
        loop = asyncio.new_event_loop()

        def run(coroutine: Coroutine[Any, Any, Any]) -> Any:
            async def bounded() -> Any:
                async with asyncio.timeout(WAIT):
                    return await coroutine

            return loop.run_until_complete(bounded())

        built = TreeMachine(UseCaseDriver(wired_tree(FakeStorage(), FakeClock(), NumberedProvider())), run)
        teardown = built.teardown

        def closing() -> None:
            teardown()
            loop.close()

        built.teardown = closing  # type: ignore[method-assign]
        return built

    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=60, stateful_step_count=25, deadline=None, suppress_health_check=list(HealthCheck)
        ),
    )
