"""Per-user limits as the interceptor sees them (`UserLimits`): a request per call and per further client message,
a slot per open stream; and the refusals they give. Kept per replica (ratelimit/replica.py) or shared by every
replica through Redis (ratelimit/redis.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from service.domain import ResourceExhausted

STREAM_RETRY_SECONDS = 1.0  # a refused stream's RetryInfo: nobody knows when another stream will end


@dataclass(frozen=True, slots=True)
class StreamSlot:
    """One open stream's place in its user's count: `stream_id` names it in a shared count ("" when only this
    replica counts it)."""

    user: str
    stream_id: str = ""


class UserLimits(Protocol):
    """What the interceptor asks of the limits: a request per call and per further client message, a slot per
    open stream. Refusals are ResourceExhausted with the time until a retry may succeed."""

    async def check_request(self, user: str) -> None: ...

    async def open_stream(self, user: str) -> StreamSlot: ...

    def close_stream(self, slot: StreamSlot) -> None:
        """Give a slot back; never waits (it runs as a stream ends, cancelled or not)."""

    @property
    def open_streams(self) -> int:
        """Streams open on this replica."""

    async def aclose(self) -> None: ...


def rate_exceeded(per_minute: int, retry_after: float) -> ResourceExhausted:
    return ResourceExhausted(f"rate limit of {per_minute} requests per minute reached", retry_after=retry_after)


def streams_exceeded(max_streams: int) -> ResourceExhausted:
    return ResourceExhausted(f"at most {max_streams} streams may be open at once", retry_after=STREAM_RETRY_SECONDS)
