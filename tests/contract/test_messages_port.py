"""`MessageRepository`: stored messages, and the lease bookkeeping of replies in flight (flush, finish, the
sweep), on the fake, SQLite and Postgres alike."""

from __future__ import annotations

import dataclasses

import pytest

from service.domain import (
    DuplicateRequest,
    FinishReason,
    Lease,
    Message,
    MessageStatus,
    Role,
    Usage,
    new_id,
)
from service.ports import Flush, Held, UnitOfWorkFactory
from tests.contract.conftest import at, conversation, lease, message, reply, stored

pytestmark = pytest.mark.timeout(30)


async def fetch(uow: UnitOfWorkFactory, message_id: str) -> Message | None:
    async with uow() as work:
        return await work.messages.get(message_id)


async def started(uow: UnitOfWorkFactory, held: Lease | None = None) -> Message:
    """A conversation with a user message and a reply streaming under `held`, committed."""
    conv, request_id = conversation(), new_id()
    in_flight = reply(conv, request_id=request_id)
    async with uow() as work:
        await work.conversations.add(conv)
        await work.messages.add(message(conv, "hi", request_id=request_id), in_flight, lease=held or lease())
        await work.commit()
    return in_flight


def progress(m: Message, content: str, held: Lease, *, until: float = 60) -> Flush:
    return Flush(m.id, content, held, renewed_until=at(until), update_time=at(until - 30))


def finished(m: Message, content: str = "all done") -> Message:
    return dataclasses.replace(
        m,
        content=content,
        status=MessageStatus.COMPLETED,
        usage=Usage(12, 3, estimated=True),
        finish_reason=FinishReason.LENGTH,
        update_time=at(9),
    )


async def leased(uow: UnitOfWorkFactory, owner: str = "replica-a") -> dict[str, Held]:
    async with uow() as work:
        return await work.messages.leased(owner)


async def sweep(uow: UnitOfWorkFactory, *, now: float, **which: str) -> list[str]:
    async with uow() as work:
        ended = await work.messages.mark_abandoned(
            now=at(now), status="interrupted", error_message="the replica went away", **which
        )
        await work.commit()
    return sorted(ended)


# ------------------------------------------------------------------------------------------ stored messages


async def test_messages_round_trip_every_field(uow: UnitOfWorkFactory) -> None:
    conv = conversation()
    failed = dataclasses.replace(
        message(conv, "partial ünïcödé 🙂", role=Role.ASSISTANT, request_id="req-9", when=at(1)),
        status=MessageStatus.FAILED,
        update_time=at(2),
        usage=Usage(7, 2, estimated=True),
        finish_reason=FinishReason.CONTENT_FILTER,
        error_message="the model provider failed",
        error_reason="MODEL_FAILED",
    )
    plain = message(conv, "no request id")
    await stored(uow, conv, messages=[failed, plain])

    assert await fetch(uow, failed.id) == failed
    assert await fetch(uow, plain.id) == plain
    assert await fetch(uow, message(conv).id) is None


@pytest.mark.parametrize(
    ("limit", "expected"), [(1, ["m4"]), (3, ["m2", "m3", "m4"]), (9, ["m0", "m1", "m2", "m3", "m4"])]
)
async def test_recent_is_the_newest_messages_oldest_first(
    uow: UnitOfWorkFactory, limit: int, expected: list[str]
) -> None:
    conv, other = conversation(), conversation()
    await stored(uow, conv, other, messages=[message(conv, f"m{i}") for i in range(5)])
    await stored(uow, messages=[message(other, "not this one")])

    async with uow() as work:
        recent = await work.messages.recent(conv.id, limit=limit)

    assert [m.content for m in recent] == expected


async def test_find_by_request_is_the_owners_messages_of_that_request_user_first(uow: UnitOfWorkFactory) -> None:
    conv, bobs = conversation(), conversation("bob")
    asked = message(conv, "question", request_id="req-1")
    answered = dataclasses.replace(message(conv, "answer", request_id="req-1"), role=Role.ASSISTANT)
    await stored(uow, conv, bobs, messages=[asked, answered, message(bobs, "bob's", request_id="req-1")])
    await stored(uow, messages=[message(conv, "no request id"), message(conv, "no request id either")])

    async with uow() as work:
        assert await work.messages.find_by_request("alice", "req-1") == [asked, answered]
        assert await work.messages.find_by_request("alice", "req-2") == []
        assert await work.messages.find_by_request("alice", "") == []  # no request id is no request


async def test_the_same_request_twice_is_a_duplicate_request(uow: UnitOfWorkFactory) -> None:
    conv = conversation()
    await stored(uow, conv, messages=[message(conv, "first", request_id="req-1")])

    with pytest.raises(DuplicateRequest):
        async with uow() as work:
            await work.messages.add(message(conv, "second", request_id="req-1"))

    async with uow() as work:
        assert [m.content for m in await work.messages.find_by_request("alice", "req-1")] == ["first"]


async def test_the_same_message_id_twice_is_a_duplicate_request(uow: UnitOfWorkFactory) -> None:
    conv = conversation()
    first = message(conv, "first")
    await stored(uow, conv, messages=[first])

    with pytest.raises(DuplicateRequest):
        async with uow() as work:
            await work.messages.add(dataclasses.replace(first, content="second"))

    assert await fetch(uow, first.id) == first


async def test_request_ids_are_unique_per_owner_and_role_only(uow: UnitOfWorkFactory) -> None:
    conv, bobs = conversation(), conversation("bob")
    await stored(
        uow,
        conv,
        bobs,
        messages=[
            message(conv, "user", request_id="req-1"),
            dataclasses.replace(message(conv, "assistant", request_id="req-1"), role=Role.ASSISTANT),
            message(bobs, "bob", request_id="req-1"),
            message(conv, "no id"),
            message(conv, "no id either"),
        ],
    )

    async with uow() as work:
        assert len(await work.messages.recent(conv.id, limit=10)) == 4


# ------------------------------------------------------------------------------------------ replies in flight


async def test_a_reply_added_under_a_lease_is_leased_by_its_owner(uow: UnitOfWorkFactory) -> None:
    in_flight = await started(uow, lease("replica-a", epoch=3))

    assert await leased(uow, "replica-a") == {in_flight.id: Held(epoch=3, cancel_requested=False)}
    assert await leased(uow, "replica-b") == {}
    assert await fetch(uow, in_flight.id) == in_flight


async def test_flush_writes_progress_under_the_lease_and_fences_everyone_else(uow: UnitOfWorkFactory) -> None:
    held = lease("replica-a", epoch=2)
    mine, stale, stranger = await started(uow, held), await started(uow, held), await started(uow, held)

    async with uow() as work:
        await work.messages.flush(
            [
                progress(mine, "Hello, wor", held),
                progress(stale, "stale epoch", dataclasses.replace(held, epoch=1)),
                progress(stranger, "other replica", dataclasses.replace(held, owner="replica-b")),
            ]
        )
        await work.commit()

    assert await fetch(uow, mine.id) == dataclasses.replace(mine, content="Hello, wor", update_time=at(30))
    assert await fetch(uow, stale.id) == stale
    assert await fetch(uow, stranger.id) == stranger


async def test_flush_renews_the_lease(uow: UnitOfWorkFactory) -> None:
    held = lease(until=30)
    in_flight = await started(uow, held)
    async with uow() as work:
        await work.messages.flush([progress(in_flight, "more", held, until=90)])
        await work.commit()

    assert await sweep(uow, now=60) == []  # renewed to 90: not abandoned at 60
    assert await sweep(uow, now=91) == [in_flight.id]


async def test_flush_of_an_empty_batch_is_harmless(uow: UnitOfWorkFactory) -> None:
    in_flight = await started(uow)
    async with uow() as work:
        await work.messages.flush([])
        await work.commit()

    assert await fetch(uow, in_flight.id) == in_flight


async def test_finish_writes_the_final_state_once_under_the_lease(uow: UnitOfWorkFactory) -> None:
    held = lease(epoch=4)
    in_flight = await started(uow, held)
    final = finished(in_flight)

    async with uow() as work:
        assert await work.messages.finish(final, held) is True
        assert await work.messages.finish(finished(in_flight, "again"), held) is False  # no longer STREAMING
        await work.commit()

    assert await fetch(uow, in_flight.id) == final
    assert await leased(uow) == {}


@pytest.mark.parametrize("fence", [{"epoch": 3}, {"epoch": 5}, {"owner": "replica-b"}])
async def test_finish_under_another_lease_writes_nothing(uow: UnitOfWorkFactory, fence: dict[str, object]) -> None:
    held = lease(epoch=4)
    in_flight = await started(uow, held)

    async with uow() as work:
        assert await work.messages.finish(finished(in_flight), dataclasses.replace(held, **fence)) is False  # type: ignore[arg-type]
        await work.commit()

    assert await fetch(uow, in_flight.id) == in_flight
    assert await leased(uow) == {in_flight.id: Held(4, False)}


async def test_finish_of_a_message_that_was_never_streaming_writes_nothing(uow: UnitOfWorkFactory) -> None:
    conv = conversation()
    done = message(conv, "done", role=Role.ASSISTANT)
    await stored(uow, conv, messages=[done])

    async with uow() as work:
        assert await work.messages.finish(finished(done), lease()) is False
        await work.commit()

    assert await fetch(uow, done.id) == done


async def test_cancel_requests_are_seen_by_the_lease_owner(uow: UnitOfWorkFactory) -> None:
    one, two = await started(uow), await started(uow)
    async with uow() as work:
        await work.messages.request_cancel(one.id)
        await work.commit()

    assert await leased(uow) == {one.id: Held(0, True), two.id: Held(0, False)}


async def test_request_cancel_all_flags_only_that_conversations_streaming_replies(uow: UnitOfWorkFactory) -> None:
    conv, other = conversation(), conversation()
    first, second, elsewhere = reply(conv), reply(conv), reply(other)
    done = message(conv, "done")
    async with uow() as work:
        await work.conversations.add(conv)
        await work.conversations.add(other)
        await work.messages.add(done, first, second, elsewhere, lease=lease())
        await work.messages.request_cancel_all(conv.id)
        await work.messages.request_cancel(done.id)  # not streaming: nothing to cancel
        await work.commit()

    assert await leased(uow) == {first.id: Held(0, True), second.id: Held(0, True), elsewhere.id: Held(0, False)}
    assert await fetch(uow, done.id) == done


# ------------------------------------------------------------------------------------------ the sweep


async def test_the_sweep_ends_replies_whose_lease_expired_exactly_once(uow: UnitOfWorkFactory) -> None:
    expired, alive = await started(uow, lease(until=10)), await started(uow, lease(until=100))

    assert await sweep(uow, now=50) == [expired.id]
    assert await sweep(uow, now=50) == []  # each reply is ended by one sweep only

    assert await fetch(uow, expired.id) == dataclasses.replace(
        expired, status=MessageStatus.INTERRUPTED, error_message="the replica went away", update_time=at(50)
    )
    assert await fetch(uow, alive.id) == alive
    assert set(await leased(uow)) == {alive.id}


async def test_the_sweep_moves_the_epoch_on_so_the_old_owner_is_fenced(uow: UnitOfWorkFactory) -> None:
    held = lease(until=10)
    in_flight = await started(uow, held)
    assert await sweep(uow, now=11) == [in_flight.id]
    swept = await fetch(uow, in_flight.id)

    async with uow() as work:  # the paused replica wakes up and carries on
        await work.messages.flush([progress(in_flight, "late words", held)])
        assert await work.messages.finish(finished(in_flight), held) is False
        await work.commit()

    assert await fetch(uow, in_flight.id) == swept


async def test_a_lease_owner_ends_its_own_replies_whatever_their_expiry(uow: UnitOfWorkFactory) -> None:
    mine = await started(uow, lease("replica-a", until=100))
    theirs = await started(uow, lease("replica-b", until=100))

    assert await sweep(uow, now=1, lease_owner="replica-a") == [mine.id]

    assert await leased(uow, "replica-b") == {theirs.id: Held(0, False)}


async def test_the_sweep_can_end_one_reply_only(uow: UnitOfWorkFactory) -> None:
    one, two = await started(uow, lease(until=10)), await started(uow, lease(until=10))

    assert await sweep(uow, now=50, message_id=two.id) == [two.id]

    assert set(await leased(uow)) == {one.id}


async def test_a_streaming_reply_without_a_lease_is_swept_by_anyone(uow: UnitOfWorkFactory) -> None:
    conv = conversation()
    orphan = reply(conv)
    await stored(uow, conv)
    async with uow() as work:
        await work.messages.add(orphan)  # no lease: nobody will ever finish it
        await work.commit()

    assert await sweep(uow, now=0, lease_owner="replica-z") == [orphan.id]


async def test_the_sweep_leaves_final_messages_alone(uow: UnitOfWorkFactory) -> None:
    held = lease(until=10)
    in_flight = await started(uow, held)
    async with uow() as work:
        await work.messages.finish(finished(in_flight), held)
        await work.commit()

    assert await sweep(uow, now=50) == []
    assert await sweep(uow, now=50, lease_owner="replica-a") == []
    assert (await fetch(uow, in_flight.id)) == finished(in_flight)


# ------------------------------------------------------------------------------------------ takeovers


async def expired(uow: UnitOfWorkFactory, *, now: float, owner: str | None = None) -> list[Message]:
    async with uow() as work:
        return list(await work.messages.expired(at(now), owner=owner))


async def take_over(uow: UnitOfWorkFactory, m: Message, owner: str, *, now: float, mine: bool = False) -> Lease | None:
    async with uow() as work:
        won = await work.messages.take_over(m, Lease(owner, 0, at(now + 30)), now=at(now), mine=mine)
        await work.commit()
    return won


async def test_expired_lists_streaming_replies_whose_lease_ran_out_or_that_an_owner_held(
    uow: UnitOfWorkFactory,
) -> None:
    dead = await started(uow, lease("replica-a", 1, until=10))
    alive = await started(uow, lease("replica-b", 1, until=100))

    assert [m.id for m in await expired(uow, now=20)] == [dead.id]
    assert [m.id for m in await expired(uow, now=20, owner="replica-b")] == [dead.id, alive.id]
    assert await expired(uow, now=5) == []


async def test_a_takeover_moves_the_epoch_on_records_where_it_continues_and_fences_the_old_owner(
    uow: UnitOfWorkFactory,
) -> None:
    old = lease("replica-a", 1, until=10)
    m = await started(uow, old)
    async with uow() as work:
        await work.messages.flush([progress(m, "partial", old, until=10)])
        await work.commit()

    won = await take_over(uow, m, "replica-b", now=20)

    assert won == Lease("replica-b", 2, at(50))
    after = await fetch(uow, m.id)
    assert after is not None
    assert (after.status, after.content, after.continued_at) == (MessageStatus.STREAMING, "partial", ((2, 7),))
    assert await leased(uow, "replica-b") == {m.id: Held(2, False)}
    async with uow() as work:  # the old owner comes back: fenced
        await work.messages.flush([progress(m, "partial and more", old)])
        assert await work.messages.finish(finished(m), old) is False
        await work.commit()
    assert (await fetch(uow, m.id)) == after


async def test_of_two_takeovers_of_one_reading_exactly_one_wins(uow: UnitOfWorkFactory) -> None:
    m = await started(uow, lease("replica-a", 1, until=10))
    (seen,) = await expired(uow, now=20)

    first = await take_over(uow, seen, "replica-b", now=20)
    second = await take_over(uow, seen, "replica-c", now=20)

    assert first is not None and second is None
    after = await fetch(uow, m.id)
    assert after is not None and len(after.continued_at) == 1


async def test_a_live_lease_cannot_be_taken_over_except_by_its_own_restarted_owner(uow: UnitOfWorkFactory) -> None:
    m = await started(uow, lease("replica-a", 1, until=100))

    assert await take_over(uow, m, "replica-b", now=20) is None
    assert await take_over(uow, m, "replica-a", now=20) is None  # not without `mine`
    assert await take_over(uow, m, "replica-a", now=20, mine=True) == Lease("replica-a", 2, at(50))


async def test_a_final_reply_is_never_taken_over(uow: UnitOfWorkFactory) -> None:
    held = lease("replica-a", 1, until=10)
    m = await started(uow, held)
    async with uow() as work:
        assert await work.messages.finish(finished(m), held)
        await work.commit()

    assert await take_over(uow, m, "replica-b", now=20) is None
