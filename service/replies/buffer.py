"""The growing text of a reply in flight, read through cursors.

A subscriber is a cursor (an offset) over this buffer, not a queue of tokens: a slow reader gets everything it
missed as one coalesced piece, memory stays bounded by the reply itself, and the writer never waits for anyone.
"""

from __future__ import annotations

import asyncio
import contextlib
from bisect import bisect_right
from collections.abc import AsyncIterator
from dataclasses import dataclass

from service.domain import DomainError, Message, OutOfRange

# Joining the pieces now and then keeps per-piece overhead (a str object each) from dominating memory.
_COMPACT_AFTER = 64


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a reply ended here: its final stored message, and the error to raise to live readers when it failed.
    `moved`: it did not end; another replica took it over (this one had lost its lease) and `message` is the
    reply as stored then — readers follow it there."""

    message: Message
    error: DomainError | None = None
    moved: bool = False


@dataclass(frozen=True, slots=True)
class Delta:
    text: str
    offset: int
    generation: int = 0  # which generation of the reply wrote it (1, then one more per continuation)


@dataclass(frozen=True, slots=True)
class Rewind:
    """The text a reader got from `offset` on is void: the replica writing it stopped before storing it, and
    the reply was continued from `offset` (by `generation`). The deltas that follow start there."""

    offset: int
    generation: int


@dataclass(frozen=True, slots=True)
class Ended:
    message: Message


class ReplyBuffer:
    """Append-only text with wake-ups. Offsets count Unicode code points (Python `str` indices)."""

    __slots__ = ("_chunks", "_ends", "_waiters", "length", "outcome")

    def __init__(self, initial: str = "") -> None:
        self._chunks: list[str] = [initial] if initial else []
        self._ends: list[int] = [len(initial)] if initial else []
        self._waiters: list[asyncio.Future[None]] = []
        self.length = len(initial)
        self.outcome: Outcome | None = None

    def append(self, text: str) -> None:
        if len(self._chunks) >= _COMPACT_AFTER:
            self._chunks = ["".join(self._chunks)]
            self._ends = [self.length]
        self.length += len(text)
        self._chunks.append(text)
        self._ends.append(self.length)
        self._wake()

    def text_from(self, offset: int) -> str:
        """The text from `offset` to the current end."""
        index = bisect_right(self._ends, offset)
        if index == len(self._chunks):
            return ""
        start = self._ends[index - 1] if index else 0
        first = self._chunks[index][offset - start :] if offset > start else self._chunks[index]
        if index == len(self._chunks) - 1:
            return first  # the common case: a reader that keeps up gets the newest piece, uncopied
        return first + "".join(self._chunks[index + 1 :])

    @property
    def text(self) -> str:
        return self.text_from(0)

    def close(self, outcome: Outcome) -> None:
        self.outcome = outcome
        self._wake()

    async def wait(self, cursor: int) -> None:
        """Return once the text extends past `cursor` or the reply has ended."""
        if self.length > cursor or self.outcome is not None:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            # Cancelled (the reader went away): leave no dangling future behind. A woken waiter is already gone.
            if waiter.cancelled() or not waiter.done():
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)

    def _wake(self) -> None:
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)


async def read(buffer: ReplyBuffer, offset: int, generation: int = 0) -> AsyncIterator[Delta | Ended]:
    """Yield the text from `offset` as it grows, coalesced, then `Ended` (or raise the reply's error). Returns
    without `Ended` when the reply moved to another replica (`Outcome.moved`): the caller follows it there."""
    cursor = offset
    while True:
        length = buffer.length
        if length > cursor:
            text = buffer.text_from(cursor)
            yield Delta(text, cursor, generation)
            cursor = length
        elif buffer.outcome is not None and buffer.outcome.moved:
            return
        elif buffer.outcome is not None:
            if cursor > length:
                raise OutOfRange.past_the_end(offset, length)
            if buffer.outcome.error is not None:
                raise buffer.outcome.error
            yield Ended(buffer.outcome.message)
            return
        else:
            await buffer.wait(cursor)
