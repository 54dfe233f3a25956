"""`ConversationRepository` and `UnitOfWork`: the fake, SQLite and Postgres agree."""

from __future__ import annotations

import dataclasses

import pytest

from service.domain import Conversation, DuplicateRequest, InvalidArgument
from service.ports import UnitOfWork, UnitOfWorkFactory
from tests.contract.conftest import (
    T0,
    assert_paged,
    at,
    coaching_session,
    conversation,
    locked_twice,
    message,
    reply,
    stored,
    walk,
)

pytestmark = pytest.mark.timeout(30)


async def fetch(uow: UnitOfWorkFactory, conversation_id: str) -> Conversation | None:
    async with uow() as work:
        return await work.conversations.get(conversation_id)


# ------------------------------------------------------------------------------------------ unit of work


async def test_committed_work_is_seen_by_the_next_unit_of_work(uow: UnitOfWorkFactory) -> None:
    conv = conversation()
    await stored(uow, conv)

    assert await fetch(uow, conv.id) == conv


async def test_work_left_without_commit_is_rolled_back(uow: UnitOfWorkFactory) -> None:
    conv = conversation()
    async with uow() as work:
        await work.conversations.add(conv)
        assert await work.conversations.get(conv.id) == conv  # a unit of work reads its own writes

    assert await fetch(uow, conv.id) is None


async def test_an_autocommit_write_stands_without_a_commit(uow: UnitOfWorkFactory) -> None:
    conv = conversation()
    async with uow(autocommit=True) as work:
        await work.conversations.add(conv)

    assert await fetch(uow, conv.id) == conv


async def test_an_autocommit_write_stands_when_an_error_follows_it(uow: UnitOfWorkFactory) -> None:
    conv = conversation()

    async def add_then_fail() -> None:
        async with uow(autocommit=True) as work:
            await work.conversations.add(conv)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await add_then_fail()

    assert await fetch(uow, conv.id) == conv


async def test_after_autocommit_work_a_unit_of_work_is_a_transaction_again(uow: UnitOfWorkFactory) -> None:
    # The pooled connection the autocommit work used must not keep autocommit: this work is rolled back.
    first, second = conversation(), conversation()
    async with uow(autocommit=True) as work:
        await work.conversations.add(first)
    async with uow() as work:
        await work.conversations.add(second)

    assert await fetch(uow, first.id) == first
    assert await fetch(uow, second.id) is None


async def test_an_error_rolls_the_work_back(uow: UnitOfWorkFactory) -> None:
    conv = conversation()

    async def add_then_fail() -> None:
        async with uow() as work:
            await work.conversations.add(conv)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await add_then_fail()

    assert await fetch(uow, conv.id) is None


async def test_writes_after_a_commit_need_a_commit_of_their_own(uow: UnitOfWorkFactory) -> None:
    first, second = conversation(), conversation()
    async with uow() as work:
        await work.conversations.add(first)
        await work.commit()
        await work.conversations.add(second)

    assert await fetch(uow, first.id) == first
    assert await fetch(uow, second.id) is None


async def test_a_duplicate_request_spoils_the_whole_unit_of_work(uow: UnitOfWorkFactory) -> None:
    conv = conversation()
    await stored(uow, conv, messages=[message(conv, request_id="req-1")])
    other = conversation()

    async def add_with_a_duplicate() -> None:
        async with uow() as work:
            await work.conversations.add(other)
            await work.messages.add(message(conv, "again", request_id="req-1"))

    with pytest.raises(DuplicateRequest):
        await add_with_a_duplicate()

    assert await fetch(uow, other.id) is None


# ------------------------------------------------------------------------------------------ conversations


async def test_get_of_an_unknown_id_is_none(uow: UnitOfWorkFactory) -> None:
    assert await fetch(uow, conversation().id) is None


async def test_update_writes_everything_but_owner_and_create_time(uow: UnitOfWorkFactory) -> None:
    conv = conversation()
    await stored(uow, conv)
    changed = dataclasses.replace(
        conv,
        owner="mallory",
        title="New title",
        model="qwen2.5:0.5b",
        persona="",
        system_prompt="Be verbose.",
        create_time=at(-100),
        update_time=at(60),
    )

    async with uow() as work:
        await work.conversations.update(changed)
        await work.commit()

    assert await fetch(uow, conv.id) == dataclasses.replace(changed, owner="alice", create_time=T0)


async def test_touch_sets_the_update_time_only(uow: UnitOfWorkFactory) -> None:
    conv = conversation()
    await stored(uow, conv)

    async with uow() as work:
        await work.conversations.touch(conv.id, at(5))
        await work.conversations.touch(conversation().id, at(5))  # unknown: nothing happens
        await work.commit()

    assert await fetch(uow, conv.id) == dataclasses.replace(conv, update_time=at(5))


async def test_touch_and_lock_returns_the_touched_conversation(uow: UnitOfWorkFactory) -> None:
    conv = conversation()
    await stored(uow, conv)

    async with uow() as work:
        touched = await work.conversations.touch_and_lock(conv.id, at(7))
        missing = await work.conversations.touch_and_lock(conversation().id, at(7))
        await work.commit()

    assert touched == dataclasses.replace(conv, update_time=at(7))
    assert missing is None
    assert await fetch(uow, conv.id) == touched


async def test_start_reply_makes_the_reply_the_leaf_and_returns_the_conversation_as_it_was(
    uow: UnitOfWorkFactory,
) -> None:
    conv = conversation()
    first = message(conv, "one")
    await stored(uow, conv, messages=[first])
    async with uow() as work:
        await work.conversations.set_current(conv.id, first.id, at(1))
        await work.commit()
    answer = reply(conv)

    async with uow() as work:
        before = await work.conversations.start_reply(conv.id, answer.id, at(8))
        missing = await work.conversations.start_reply(conversation().id, answer.id, at(8))
        await work.messages.add(answer)
        await work.commit()

    assert before == dataclasses.replace(conv, current_message_id=first.id, update_time=at(8))
    assert missing is None
    assert await fetch(uow, conv.id) == dataclasses.replace(before, current_message_id=answer.id)


async def test_start_reply_left_uncommitted_changes_nothing(uow: UnitOfWorkFactory) -> None:
    conv = conversation()
    await stored(uow, conv)

    async with uow() as work:
        assert await work.conversations.start_reply(conv.id, reply(conv).id, at(9)) is not None

    assert await fetch(uow, conv.id) == conv


async def test_start_reply_serialises_two_replies_each_after_the_other(uow: UnitOfWorkFactory) -> None:
    """Two replies starting at once: the second waits for the first's commit and follows its reply (on Postgres the
    previous leaf is read under the lock in the same statement that replaces it)."""
    conv = conversation()
    await stored(uow, conv)
    replies = iter([reply(conv), reply(conv)])
    seen: list[tuple[str, str]] = []

    async def start(work: UnitOfWork) -> tuple[Conversation | None, str]:
        answer = next(replies)
        return await work.conversations.start_reply(conv.id, answer.id, at(3)), answer.id

    async def insert(work: UnitOfWork, started: tuple[Conversation | None, str]) -> None:
        before, answer_id = started
        assert before is not None
        seen.append((before.current_message_id, answer_id))

    await locked_twice(uow, start, insert)

    (first_after, first_id), (second_after, second_id) = seen
    assert (first_after, second_after) == ("", first_id)
    stored_conv = await fetch(uow, conv.id)
    assert stored_conv is not None and stored_conv.current_message_id == second_id


async def test_get_for_update_serialises_read_modify_write(uow: UnitOfWorkFactory) -> None:
    conv = conversation(title="")
    await stored(uow, conv)

    async def append(work: UnitOfWork, current: Conversation | None) -> None:
        assert current is not None
        await work.conversations.update(dataclasses.replace(current, title=current.title + "+"))

    await locked_twice(uow, lambda work: work.conversations.get(conv.id, for_update=True), append)

    stored_conv = await fetch(uow, conv.id)
    assert stored_conv is not None and stored_conv.title == "++"


async def test_delete_takes_the_messages_and_coaching_sessions_with_it(uow: UnitOfWorkFactory) -> None:
    doomed, kept = conversation(), conversation()
    doomed_messages = [message(doomed, "one"), message(doomed, "two")]
    kept_message = message(kept, "stays")
    session, kept_session = coaching_session(doomed), coaching_session(kept)
    await stored(uow, doomed, kept, messages=[*doomed_messages, kept_message])
    async with uow() as work:
        await work.messages.add(reply(doomed))
        await work.coaching_sessions.add(session)
        await work.coaching_sessions.add(kept_session)
        await work.commit()

    async with uow() as work:
        await work.conversations.delete(doomed.id)
        await work.commit()

    async with uow() as work:
        assert await work.conversations.get(doomed.id) is None
        assert await work.messages.get(doomed_messages[0].id) is None
        assert await work.messages.recent(doomed.id, limit=10) == []
        assert await work.coaching_sessions.get(session.id) is None
        assert await work.conversations.get(kept.id) == kept
        assert await work.messages.get(kept_message.id) == kept_message
        assert await work.coaching_sessions.get(kept_session.id) == kept_session


# ------------------------------------------------------------------------------------------ listing


async def test_list_by_owner_is_most_recently_updated_first_and_only_the_owners(uow: UnitOfWorkFactory) -> None:
    old, new, newest = conversation(when=at(1)), conversation(when=at(2)), conversation(when=at(3))
    await stored(uow, new, conversation("bob", when=at(4)), newest, old)

    async with uow() as work:
        page = await work.conversations.list_by_owner("alice", limit=10, after=None)

    assert page.items == [newest, new, old]
    assert page.cursor is None


async def test_list_by_owner_breaks_ties_by_id_descending(uow: UnitOfWorkFactory) -> None:
    same_time = [conversation() for _ in range(4)]
    await stored(uow, *same_time)

    async with uow() as work:
        page = await work.conversations.list_by_owner("alice", limit=10, after=None)

    assert [c.id for c in page.items] == sorted((c.id for c in same_time), reverse=True)


@pytest.mark.parametrize("limit", [1, 2, 3, 5])
async def test_list_by_owner_pages_cover_every_conversation_once(uow: UnitOfWorkFactory, limit: int) -> None:
    convs = [conversation(when=at(i // 2)) for i in range(5)]  # pairs share an update time
    await stored(uow, *convs)
    async with uow() as work:
        whole = (await work.conversations.list_by_owner("alice", limit=10, after=None)).items

    pages = await walk(uow, lambda work, after: work.conversations.list_by_owner("alice", limit=limit, after=after))

    assert_paged(pages, whole, limit)  # a full last page ends the listing: no empty page after it


async def test_a_touch_moves_a_conversation_to_the_front(uow: UnitOfWorkFactory) -> None:
    first, second = conversation(when=at(1)), conversation(when=at(2))
    await stored(uow, first, second)

    async with uow() as work:
        await work.conversations.touch(first.id, at(3))
        await work.commit()
        page = await work.conversations.list_by_owner("alice", limit=10, after=None)

    assert [c.id for c in page.items] == [first.id, second.id]


@pytest.mark.parametrize("cursor", ["not a cursor", "2025-01-01T00:00:00|x", "2025-01-01T00:00:00+00:00|not-a-uuid"])
async def test_list_by_owner_refuses_a_malformed_cursor(uow: UnitOfWorkFactory, cursor: str) -> None:
    async with uow() as work:
        with pytest.raises(InvalidArgument):
            await work.conversations.list_by_owner("alice", limit=10, after=cursor)
