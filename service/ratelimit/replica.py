"""Per-user limits kept by one replica, in memory: requests per minute (a token bucket) and concurrent streams.

`RateLimiter` counts; `ReplicaLimits` is the `UserLimits` over it (ratelimit/limits.py). ratelimit/redis.py
keeps the same limits for every replica, with a `RateLimiter` as its fallback.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from service.ratelimit.limits import StreamSlot, rate_exceeded, streams_exceeded

_PRUNE_AT = 10_000  # buckets kept before full (idle) ones are dropped


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """`per_minute` requests per user, refilled continuously, with bursts up to `per_minute`; at most
    `max_streams` streaming RPCs open per user. 0 turns a limit off. State is in memory on this replica."""

    def __init__(self, *, per_minute: int, max_streams: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._capacity = float(per_minute)
        self._rate = per_minute / 60.0
        self._max_streams = max_streams
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._streams: dict[str, int] = {}

    def check_request(self, user: str) -> None:
        """Take one request from the user's bucket, or raise ResourceExhausted saying when one is back."""
        if not self._capacity:
            return
        now = self._clock()
        bucket = self._buckets.get(user)
        if bucket is None:
            if len(self._buckets) >= _PRUNE_AT:
                self._prune(now)
            bucket = self._buckets[user] = _Bucket(self._capacity, now)
        bucket.tokens = min(self._capacity, bucket.tokens + (now - bucket.updated) * self._rate)
        bucket.updated = now
        if bucket.tokens < 1.0:
            retry_after = (1.0 - bucket.tokens) / self._rate
            raise rate_exceeded(int(self._capacity), retry_after)
        bucket.tokens -= 1.0

    def open_stream(self, user: str) -> None:
        """Take one of the user's stream slots (give it back with `close_stream`), or raise ResourceExhausted."""
        open_now = self._streams.get(user, 0)
        if self._max_streams and open_now >= self._max_streams:
            raise streams_exceeded(self._max_streams)
        self._streams[user] = open_now + 1

    def close_stream(self, user: str) -> None:
        left = self._streams[user] - 1
        if left:
            self._streams[user] = left
        else:
            del self._streams[user]

    @property
    def open_streams(self) -> int:
        return sum(self._streams.values())

    def _prune(self, now: float) -> None:
        full = [u for u, b in self._buckets.items() if b.tokens + (now - b.updated) * self._rate >= self._capacity]
        for user in full:
            del self._buckets[user]


class ReplicaLimits:
    """`UserLimits` kept by this replica alone: a user spread over N replicas gets up to N times the limits."""

    def __init__(self, limiter: RateLimiter) -> None:
        self._limiter = limiter

    async def check_request(self, user: str) -> None:
        self._limiter.check_request(user)

    async def open_stream(self, user: str) -> StreamSlot:
        self._limiter.open_stream(user)
        return StreamSlot(user)

    def close_stream(self, slot: StreamSlot) -> None:
        self._limiter.close_stream(slot.user)

    @property
    def open_streams(self) -> int:
        return self._limiter.open_streams

    async def aclose(self) -> None:
        return None
