"""`MessageRepository.search`: what the fake's search must share with FTS5 (SQLite) and tsvector (Postgres).

Scores differ by back end (bm25's term-frequency part, `ts_rank_cd`, a count); the contract is the scoping, the
matching of whole words, the order the scores give, the excerpt's marks and the paging. The words below are
no English stop words and stem to themselves, so Postgres' `english` configuration finds what the others do.
"""

from __future__ import annotations

import dataclasses

import pytest

from service.domain import InvalidArgument, Message, MessageStatus, Role, SearchHit
from service.ports import Flush, UnitOfWorkFactory
from tests.contract.conftest import assert_paged, at, conversation, lease, message, reply, stored, walk

pytestmark = pytest.mark.timeout(30)


async def search(uow: UnitOfWorkFactory, *terms: str, owner: str = "alice", limit: int = 20) -> list[SearchHit]:
    async with uow() as work:
        page = await work.messages.search(owner, terms, limit=limit, after=None)
    assert page.cursor is None, "more hits than the test expects"
    return list(page.items)


def contents(hits: list[SearchHit]) -> list[str]:
    return [hit.message.content for hit in hits]


async def test_search_finds_only_the_owners_messages(uow: UnitOfWorkFactory) -> None:
    mine, bobs = conversation(title="Mine"), conversation("bob", title="Bob's")
    found = message(mine, "a zebra crossing")
    await stored(uow, mine, bobs, messages=[found, message(bobs, "a zebra crossing")])

    (hit,) = await search(uow, "zebra")

    assert hit.message == found
    assert hit.conversation_title == "Mine"
    assert isinstance(hit.score, float) and hit.score > 0
    assert contents(await search(uow, "zebra", owner="bob")) == ["a zebra crossing"]
    assert await search(uow, "zebra", owner="carol") == []


async def test_search_needs_every_term_as_a_whole_word(uow: UnitOfWorkFactory) -> None:
    conv = conversation()
    await stored(
        uow,
        conv,
        messages=[
            message(conv, "zebra and giraffe"),
            message(conv, "zebra alone"),
            message(conv, "zebras2 giraffes2 zebrafish"),  # other words that merely contain the terms
        ],
    )

    assert contents(await search(uow, "zebra", "giraffe")) == ["zebra and giraffe"]
    assert sorted(contents(await search(uow, "zebra"))) == ["zebra alone", "zebra and giraffe"]
    assert await search(uow, "zeb") == []


async def test_search_ignores_case(uow: UnitOfWorkFactory) -> None:
    conv = conversation()
    await stored(uow, conv, messages=[message(conv, "ZEBRA Crossing")])

    assert contents(await search(uow, "zebra", "crossing")) == ["ZEBRA Crossing"]


async def test_search_skips_replies_still_streaming_until_they_are_final(uow: UnitOfWorkFactory) -> None:
    conv = conversation()
    in_flight = reply(conv)
    held = lease()
    await stored(uow, conv)
    async with uow() as work:
        await work.messages.add(in_flight, lease=held)
        await work.messages.flush([Flush(in_flight.id, "zebra so far", held, at(60), at(1))])
        await work.commit()

    assert await search(uow, "zebra") == []

    final = dataclasses.replace(in_flight, content="zebra at last", status=MessageStatus.COMPLETED)
    async with uow() as work:
        assert await work.messages.finish(final, held)
        await work.commit()

    assert contents(await search(uow, "zebra")) == ["zebra at last"]


@pytest.mark.parametrize("status", [MessageStatus.FAILED, MessageStatus.CANCELLED, MessageStatus.INTERRUPTED])
async def test_search_finds_every_final_state(uow: UnitOfWorkFactory, status: MessageStatus) -> None:
    conv = conversation()
    ended = dataclasses.replace(message(conv, "zebra", role=Role.ASSISTANT), status=status)
    await stored(uow, conv, messages=[ended])

    assert contents(await search(uow, "zebra")) == ["zebra"]


async def test_more_occurrences_rank_higher(uow: UnitOfWorkFactory) -> None:
    conv = conversation()
    # Equal lengths: only how often the word occurs tells them apart.
    once, thrice = "zebra lion lion lion", "zebra zebra zebra lion"
    await stored(uow, conv, messages=[message(conv, once), message(conv, thrice)])

    hits = await search(uow, "zebra")

    assert contents(hits) == [thrice, once]
    assert hits[0].score > hits[1].score


async def test_equal_scores_put_the_newest_message_first(uow: UnitOfWorkFactory) -> None:
    conv = conversation()
    twins = [message(conv, "zebra crossing") for _ in range(3)]
    await stored(uow, conv, messages=twins)

    hits = await search(uow, "zebra")

    assert [hit.message.id for hit in hits] == [m.id for m in reversed(twins)]


async def test_the_excerpt_marks_the_matched_words(uow: UnitOfWorkFactory) -> None:
    conv = conversation()
    await stored(uow, conv, messages=[message(conv, "the Zebra crossed the road")])

    (hit,) = await search(uow, "zebra")

    assert "**Zebra**" in hit.snippet
    assert "crossed" in hit.snippet


@pytest.mark.parametrize("limit", [1, 2, 3, 7])
async def test_search_pages_cover_every_hit_once_in_order(uow: UnitOfWorkFactory, limit: int) -> None:
    conv = conversation()
    added: list[Message] = []
    for i in range(7):  # scores tie in pairs: the keyset must order within a tie too
        added.append(message(conv, " ".join(["zebra"] * (1 + i // 2) + ["lion"] * (4 - i // 2))))
    await stored(uow, conv, messages=added)
    whole = await search(uow, "zebra")

    pages = await walk(uow, lambda work, after: work.messages.search("alice", ("zebra",), limit=limit, after=after))

    assert len(whole) == 7
    assert_paged([[hit.message.id for hit in page] for page in pages], [hit.message.id for hit in whole], limit)


@pytest.mark.parametrize("cursor", ["x", "1.0", "nan|3", "inf|3", "1.0|x"])
async def test_search_refuses_a_malformed_cursor(uow: UnitOfWorkFactory, cursor: str) -> None:
    async with uow() as work:
        with pytest.raises(InvalidArgument):
            await work.messages.search("alice", ("zebra",), limit=10, after=cursor)
