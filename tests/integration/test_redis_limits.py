"""RedisLimits against a real Redis: the rate means what the replica's token bucket means, open streams stay
counted while their replica renews them and only then, and concurrent checks are counted exactly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio

from service.domain import ResourceExhausted
from service.ratelimit.redis import RedisLimits
from service.ratelimit.replica import RateLimiter
from tests.e2e.process import poll_until


def limits(url: str, prefix: str, *, per_minute: int = 0, max_streams: int = 0, ttl: float = 15) -> RedisLimits:
    local = RateLimiter(per_minute=per_minute, max_streams=max_streams)
    return RedisLimits.connect(
        url, local, timeout=1.0, prefix=prefix, per_minute=per_minute, max_streams=max_streams, stream_ttl=ttl
    )


@pytest.fixture
async def client(redis_server: str) -> AsyncIterator[redis.asyncio.Redis]:
    connection = redis.asyncio.Redis.from_url(redis_server, decode_responses=True)
    yield connection
    await connection.aclose()


async def test_the_rate_is_the_replica_token_bucket(redis_server: str, redis_prefix: str) -> None:
    limiter = limits(redis_server, redis_prefix, per_minute=6)
    try:
        for _ in range(6):
            await limiter.check_request("alice")
        with pytest.raises(ResourceExhausted) as error:
            await limiter.check_request("alice")
        assert 9.0 < error.value.retry_after <= 10.0  # 6 a minute: the next one 10 s after the burst
        await limiter.check_request("bob")
    finally:
        await limiter.aclose()


async def test_concurrent_checks_on_two_replicas_are_counted_exactly(redis_server: str, redis_prefix: str) -> None:
    a, b = limits(redis_server, redis_prefix, per_minute=10), limits(redis_server, redis_prefix, per_minute=10)
    try:
        results = await asyncio.gather(
            *(replica.check_request("alice") for _ in range(15) for replica in (a, b)), return_exceptions=True
        )
        assert [r for r in results if not isinstance(r, ResourceExhausted)] == [None] * 10
    finally:
        await a.aclose()
        await b.aclose()


async def test_an_open_stream_is_renewed_past_its_ttl_and_a_closed_one_never_comes_back(
    redis_server: str, redis_prefix: str, client: redis.asyncio.Redis
) -> None:
    holder = limits(redis_server, redis_prefix, max_streams=2, ttl=0.6)
    other = limits(redis_server, redis_prefix, max_streams=2, ttl=0.6)
    key = f"{redis_prefix}streams:alice"
    try:
        held = await holder.open_stream("alice")
        closed = await holder.open_stream("alice")
        first_expiry = await client.zscore(key, held.stream_id)
        assert first_expiry is not None
        holder.close_stream(closed)

        async def renewed_past_first_expiry() -> bool:  # by Redis's clock: the first TTL is over
            seconds, micros = await client.time()
            score = await client.zscore(key, held.stream_id)
            return seconds * 1000 + micros // 1000 > first_expiry and score is not None and score > first_expiry

        await poll_until(renewed_past_first_expiry, within=10, interval=0.05)
        assert await client.zrange(key, 0, -1) == [held.stream_id]  # renewed; the closed one stayed gone
        await other.open_stream("alice")
        with pytest.raises(ResourceExhausted):
            await other.open_stream("alice")
        assert (holder.open_streams, other.open_streams) == (1, 1)
    finally:
        await holder.aclose()
        await other.aclose()
