"""The reply buffer: append-only text read through cursors, with wake-ups and a final outcome."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.domain import Message, MessageStatus, ModelFailed, OutOfRange, Role
from service.replies.buffer import Delta, Ended, Outcome, ReplyBuffer, read

WHEN = datetime(2025, 1, 1, tzinfo=UTC)


def final(content: str, status: MessageStatus = MessageStatus.COMPLETED) -> Message:
    return Message("m1", "c1", "alice", Role.ASSISTANT, content, status, WHEN, WHEN)


def buffer_of(*pieces: str) -> ReplyBuffer:
    buffer = ReplyBuffer()
    for piece in pieces:
        buffer.append(piece)
    return buffer


async def collect(events: AsyncIterator[Delta | Ended]) -> list[Delta | Ended]:
    async with asyncio.timeout(5):
        return [event async for event in events]


async def next_event(events: AsyncIterator[Delta | Ended]) -> Delta | Ended:
    async with asyncio.timeout(5):
        return await anext(events)


# ---------------------------------------------------------------------------------------------- text_from


def test_text_from_every_offset_is_the_rest_of_the_text() -> None:
    pieces = ("ab", "", "cdé", "🙂f", "日本語")
    buffer = buffer_of(*pieces)
    full = "".join(pieces)

    assert buffer.length == len(full)
    assert [buffer.text_from(o) for o in range(len(full) + 2)] == [full[o:] for o in range(len(full) + 2)]


def test_initial_text_counts_as_already_appended() -> None:
    buffer = ReplyBuffer("héllo")
    buffer.append(" wörld")

    assert buffer.length == 11
    assert buffer.text == "héllo wörld"
    assert buffer.text_from(3) == "lo wörld"


def test_an_empty_buffer_has_no_text_at_any_offset() -> None:
    assert ReplyBuffer().text_from(0) == ""
    assert ReplyBuffer().text == ""


@given(
    pieces=st.lists(st.text(alphabet=st.characters(codec="utf-8"), max_size=8), max_size=300),
    offsets=st.lists(st.integers(min_value=0, max_value=2500), max_size=20),
)
def test_text_from_survives_compaction(pieces: list[str], offsets: list[int]) -> None:
    buffer = ReplyBuffer()
    written = ""
    for piece in pieces:
        buffer.append(piece)
        written += piece
        assert buffer.text_from(len(written) // 2) == written[len(written) // 2 :]
    full = "".join(pieces)

    assert buffer.length == len(full)
    assert buffer.text == full
    for offset in offsets:
        assert buffer.text_from(offset) == full[offset:]


# ---------------------------------------------------------------------------------------------- read


async def test_read_from_any_offset_gets_exactly_the_remaining_text() -> None:
    full = "héllo 🙂 wörld"
    buffer = buffer_of("héllo ", "🙂 ", "wörld")
    buffer.close(Outcome(final(full)))

    for offset in range(len(full) + 1):
        events = await collect(read(buffer, offset))
        text = "".join(e.text for e in events if isinstance(e, Delta))
        assert text == full[offset:]
        assert events[-1] == Ended(final(full))


async def test_a_slow_reader_gets_several_appends_as_one_delta() -> None:
    buffer = buffer_of("one")
    events = read(buffer, 0)
    assert await next_event(events) == Delta("one", 0)

    for piece in (" two", " three", " four"):
        buffer.append(piece)

    assert await next_event(events) == Delta(" two three four", 3)
    await events.aclose()  # type: ignore[attr-defined]


async def test_deltas_of_a_growing_reply_are_contiguous() -> None:
    buffer = ReplyBuffer()
    events = read(buffer, 0)
    received: list[Delta] = []

    for piece in ("a", "bc", "déf"):
        buffer.append(piece)
        event = await next_event(events)
        assert isinstance(event, Delta)
        received.append(event)
    buffer.close(Outcome(final("abcdéf")))

    assert received == [Delta("a", 0), Delta("bc", 1), Delta("déf", 3)]
    assert await next_event(events) == Ended(final("abcdéf"))


async def test_a_waiting_reader_is_woken_by_an_append() -> None:
    buffer = ReplyBuffer()
    events = read(buffer, 0)
    pending = asyncio.ensure_future(next_event(events))
    await asyncio.sleep(0)  # let the reader park
    assert not pending.done()

    buffer.append("hi")

    assert await pending == Delta("hi", 0)
    await events.aclose()  # type: ignore[attr-defined]


async def test_a_waiting_reader_is_woken_by_close() -> None:
    buffer = buffer_of("done")
    events = read(buffer, 4)
    pending = asyncio.ensure_future(next_event(events))
    await asyncio.sleep(0)
    assert not pending.done()

    buffer.close(Outcome(final("done")))

    assert await pending == Ended(final("done"))


async def test_every_waiting_reader_is_woken() -> None:
    buffer = ReplyBuffer()
    readers = [asyncio.ensure_future(collect(read(buffer, 0))) for _ in range(3)]
    await asyncio.sleep(0)

    buffer.append("x")
    buffer.close(Outcome(final("x")))

    assert await asyncio.gather(*readers) == [[Delta("x", 0), Ended(final("x"))]] * 3


async def test_a_cancelled_waiter_leaves_no_future_behind() -> None:
    buffer = ReplyBuffer()
    waiter = asyncio.ensure_future(buffer.wait(0))
    await asyncio.sleep(0)
    assert not waiter.done()

    waiter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiter

    assert buffer._waiters == []  # nothing public shows the leak: reach in, deliberately


async def test_a_reader_cancelled_by_a_timeout_leaves_no_future_behind() -> None:
    buffer = ReplyBuffer()

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await buffer.wait(0)

    assert buffer._waiters == []


async def test_wait_returns_at_once_when_text_is_already_past_the_cursor_or_the_reply_ended() -> None:
    buffer = buffer_of("abc")
    async with asyncio.timeout(1):
        await buffer.wait(2)
        buffer.close(Outcome(final("abc")))
        await buffer.wait(3)


async def test_a_failed_reply_gives_readers_all_its_text_then_the_error() -> None:
    buffer = buffer_of("partial ", "text")
    error = ModelFailed("the model failed")
    buffer.close(Outcome(final("partial text", MessageStatus.FAILED), error))
    events = read(buffer, 2)

    assert await next_event(events) == Delta("rtial text", 2)
    with pytest.raises(ModelFailed) as raised:
        await next_event(events)
    assert raised.value is error


async def test_a_reader_at_the_final_length_gets_only_the_end() -> None:
    buffer = buffer_of("abc")
    buffer.close(Outcome(final("abc")))

    assert await collect(read(buffer, 3)) == [Ended(final("abc"))]


async def test_a_cursor_past_the_final_length_is_out_of_range() -> None:
    buffer = buffer_of("abc")
    buffer.close(Outcome(final("abc")))

    with pytest.raises(OutOfRange) as error:
        await collect(read(buffer, 4))

    assert error.value.metadata == {"offset": "4", "length": "3"}


async def test_a_cursor_ahead_of_a_reply_in_flight_waits_for_the_text_to_reach_it() -> None:
    buffer = buffer_of("ab")
    events = read(buffer, 4)
    pending = asyncio.ensure_future(next_event(events))
    await asyncio.sleep(0)
    assert not pending.done()

    buffer.append("cdef")

    assert await pending == Delta("ef", 4)
    await events.aclose()  # type: ignore[attr-defined]


async def test_a_cursor_ahead_of_a_reply_that_ends_short_is_out_of_range() -> None:
    buffer = buffer_of("ab")
    reader = asyncio.ensure_future(collect(read(buffer, 5)))
    await asyncio.sleep(0)

    buffer.append("c")
    buffer.close(Outcome(final("abc")))

    with pytest.raises(OutOfRange):
        await reader
