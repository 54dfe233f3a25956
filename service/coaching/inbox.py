"""Reading a client's stream with a deadline, without losing the message that arrives after it."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

T = TypeVar("T")


class TimedOut(enum.Enum):
    TIMED_OUT = "timed out"


TIMED_OUT = TimedOut.TIMED_OUT


class Inbox(Generic[T]):
    """`next(within)` is the stream's next item, None once the client has closed its side, or TIMED_OUT. A
    read that timed out stays pending and is what the next call returns."""

    def __init__(self, items: AsyncIterator[T]) -> None:
        self._items = items
        self._pending: asyncio.Future[T | None] | None = None

    async def next(self, within: float | None = None) -> T | TimedOut | None:
        if self._pending is None:
            self._pending = asyncio.ensure_future(anext(self._items, None))
        done, _ = await asyncio.wait({self._pending}, timeout=within)
        if not done:
            return TIMED_OUT
        read, self._pending = self._pending, None
        return read.result()

    def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
