"""The message tree in the storage ports (parents, the current branch, branches walked and paged, siblings, subtrees),
on the fake, SQLite and Postgres alike."""

from __future__ import annotations

import dataclasses
import uuid

import pytest

from service.domain import Attachment, Conversation, InvalidArgument, Message, MessageStatus, Role, Siblings
from service.ports import UnitOfWorkFactory
from tests.contract.conftest import assert_paged, at, conversation, lease, message, reply, stored, walk

pytestmark = pytest.mark.timeout(30)


def after(parent: Message | None, m: Message) -> Message:
    return dataclasses.replace(m, parent_id=parent.id if parent else "")


def chain(conv: Conversation, count: int, under: Message | None = None, prefix: str = "m") -> list[Message]:
    """`count` messages, each after the one before (the first after `under`), user and assistant in turn."""
    made: list[Message] = []
    for i in range(count):
        role = Role.USER if i % 2 == 0 else Role.ASSISTANT
        made.append(after(made[-1] if made else under, message(conv, f"{prefix}{i}", role=role)))
    return made


def attachment(name: str) -> Attachment:
    return Attachment(str(uuid.uuid4()), "alice", name, "text/plain", "text/plain", 3, "0" * 64, at(0))


def bare(messages: list[Message]) -> list[Message]:
    """As stored, without the places a listing adds."""
    return [dataclasses.replace(m, siblings=None) for m in messages]


async def test_the_current_branch_is_set_and_kept_by_updates(uow: UnitOfWorkFactory) -> None:
    conv = conversation()
    first, second = chain(conv, 2)
    await stored(uow, conv, messages=[first, second])

    async with uow() as work:
        await work.conversations.set_current(conv.id, second.id, at(5))
        await work.conversations.update(dataclasses.replace(conv, title="Renamed", current_message_id=first.id))
        await work.commit()
    async with uow() as work:
        got = await work.conversations.get(conv.id)
        assert got is not None and (got.current_message_id, got.title) == (second.id, "Renamed")
        await work.conversations.set_current(conv.id, "", at(6))  # emptied
        await work.commit()
    async with uow() as work:
        emptied = await work.conversations.get(conv.id)
    assert emptied is not None and (emptied.current_message_id, emptied.update_time) == ("", at(6))


async def test_a_branch_is_the_path_to_its_leaf_oldest_first(uow: UnitOfWorkFactory) -> None:
    conv, other = conversation(), conversation()
    trunk = chain(conv, 4)
    twig = chain(conv, 2, under=trunk[1], prefix="t")
    elsewhere = chain(other, 1)
    await stored(uow, conv, other, messages=[*trunk, *twig, *elsewhere])

    async with uow() as work:
        assert await work.messages.branch(conv.id, trunk[-1].id, limit=10) == trunk
        assert await work.messages.branch(conv.id, twig[-1].id, limit=10) == [*trunk[:2], *twig]
        assert await work.messages.branch(conv.id, twig[-1].id, limit=3) == [trunk[1], *twig]
        assert await work.messages.branch(conv.id, elsewhere[0].id, limit=10) == []  # not this conversation's
        assert await work.messages.branch(conv.id, message(conv).id, limit=10) == []


async def test_a_branch_carries_the_ids_of_each_messages_files_in_their_order(uow: UnitOfWorkFactory) -> None:
    conv = conversation()
    question, answer, follow_up = chain(conv, 3)
    await stored(uow, conv, messages=[question, answer, follow_up])
    files = [attachment(f"file-{i}") for i in range(11)]  # two-digit positions: ordered as numbers, not text
    async with uow() as work:
        for file in files:
            await work.attachments.add(file)
        await work.attachments.link(question.id, [f.id for f in reversed(files)])
        await work.attachments.link(follow_up.id, [files[3].id])
        await work.commit()

    async with uow() as work:
        got = await work.messages.branch(conv.id, follow_up.id, limit=10)

    assert [m.attachment_ids for m in got] == [tuple(f.id for f in reversed(files)), (), (files[3].id,)]
    assert [dataclasses.replace(m, attachment_ids=()) for m in got] == [question, answer, follow_up]


@pytest.mark.parametrize("limit", [1, 2, 3, 5])
async def test_a_branch_pages_once_in_order_with_each_message_placed(uow: UnitOfWorkFactory, limit: int) -> None:
    conv = conversation()
    trunk = chain(conv, 5)
    # A second reply beside trunk[1], and a second first message: trunk[0] and trunk[1] have a sibling each.
    beside, first_again = after(trunk[0], message(conv, "again", role=Role.ASSISTANT)), message(conv, "hi")
    await stored(uow, conv, messages=[*trunk, beside, first_again])

    pages = await walk(
        uow, lambda work, cursor: work.messages.list_branch(conv.id, trunk[-1].id, limit=limit, after=cursor)
    )

    assert_paged([bare(page) for page in pages], trunk, limit)
    places = [m.siblings for page in pages for m in page]
    assert places == [
        Siblings(2, 0, "", first_again.id),
        Siblings(2, 0, "", beside.id),
        Siblings(1, 0),
        Siblings(1, 0),
        Siblings(1, 0),
    ]


@pytest.mark.parametrize("cursor", ["x", "-1", "1.5", "9" * 19])
async def test_a_branch_listing_refuses_a_malformed_cursor(uow: UnitOfWorkFactory, cursor: str) -> None:
    conv = conversation()
    (only,) = chain(conv, 1)
    await stored(uow, conv, messages=[only])
    async with uow() as work:
        with pytest.raises(InvalidArgument):
            await work.messages.list_branch(conv.id, only.id, limit=10, after=cursor)
        with pytest.raises(InvalidArgument):
            await work.messages.list_branch(conv.id, "", limit=10, after=cursor)  # even without a leaf


async def test_siblings_are_the_messages_sharing_a_parent(uow: UnitOfWorkFactory) -> None:
    conv = conversation()
    question = message(conv, "q")
    answers = [after(question, message(conv, f"a{i}", role=Role.ASSISTANT)) for i in range(3)]
    await stored(uow, conv, messages=[question, *answers, after(answers[0], message(conv, "deeper"))])

    pages = await walk(uow, lambda work, cursor: work.messages.list_siblings(answers[1], limit=2, after=cursor))

    assert_paged([bare(page) for page in pages], answers, 2)
    assert [m.siblings for page in pages for m in page] == [
        Siblings(3, 0, "", answers[1].id),
        Siblings(3, 1, answers[0].id, answers[2].id),
        Siblings(3, 2, answers[1].id, ""),
    ]


async def test_the_newest_message_under_one_is_a_leaf(uow: UnitOfWorkFactory) -> None:
    conv, empty = conversation(), conversation()
    trunk = chain(conv, 3)
    twig = chain(conv, 2, under=trunk[0], prefix="t")
    await stored(uow, conv, empty, messages=[*trunk, *twig])

    async with uow() as work:
        assert await work.messages.newest_leaf(conv.id, trunk[0].id) == twig[-1].id
        assert await work.messages.newest_leaf(conv.id, trunk[1].id) == trunk[-1].id
        assert await work.messages.newest_leaf(conv.id, trunk[-1].id) == trunk[-1].id
        assert await work.messages.newest_leaf(conv.id, None) == twig[-1].id
        assert await work.messages.newest_leaf(empty.id, None) is None
        assert await work.messages.newest_leaf(empty.id, trunk[0].id) is None  # not that conversation's


async def test_a_subtree_is_found_and_deleted_and_nothing_else(uow: UnitOfWorkFactory) -> None:
    conv, other = conversation(), conversation()
    trunk = chain(conv, 3)
    twig = chain(conv, 2, under=trunk[0], prefix="t")
    in_flight = after(twig[-1], reply(conv))
    elsewhere = chain(other, 2)
    await stored(uow, conv, other, messages=[*trunk, *twig, *elsewhere])
    async with uow() as work:
        await work.messages.add(in_flight, lease=lease())
        await work.commit()

    async with uow() as work:
        assert await work.messages.streaming_under(conv.id, trunk[0].id) == [in_flight.id]
        assert await work.messages.streaming_under(conv.id, trunk[1].id) == []
        assert await work.messages.delete_subtree(conv.id, twig[0].id) == 3
        assert await work.messages.delete_subtree(conv.id, elsewhere[0].id) == 0  # not this conversation's
        await work.commit()

    async with uow() as work:
        assert await work.messages.recent(conv.id, limit=10) == trunk
        assert await work.messages.recent(other.id, limit=10) == elsewhere
        assert await work.messages.delete_subtree(conv.id, trunk[0].id) == 3
        assert await work.messages.delete_subtree(conv.id, trunk[0].id) == 0


async def test_search_says_which_hits_are_on_the_current_branch(uow: UnitOfWorkFactory) -> None:
    conv = conversation()
    question = message(conv, "narwhals")
    first, second = (after(question, message(conv, f"narwhals {n}", role=Role.ASSISTANT)) for n in ("one", "two"))
    cancelled = dataclasses.replace(after(second, message(conv, "")), status=MessageStatus.CANCELLED)
    await stored(uow, conv, messages=[question, first, second, cancelled])
    async with uow() as work:
        await work.conversations.set_current(conv.id, second.id, at(1))
        await work.commit()

    async with uow() as work:
        hits = await work.messages.search("alice", ("narwhals",), limit=10, after=None)

    assert {hit.message.id: hit.on_current_branch for hit in hits.items} == {
        question.id: True,
        first.id: False,
        second.id: True,
    }
