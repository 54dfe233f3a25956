"""A replica that dies with streams open: in Redis its streams keep counting against their user until their
TTL runs out (nobody renews them any more), then free themselves; no replica has to notice the death."""

from __future__ import annotations

import signal
import time

import grpc
import pytest
import redis.asyncio

from tests.e2e.conftest import ServerFactory
from tests.e2e.process import poll_until
from tests.e2e.test_faults import Client, mint_key

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

STREAM_TTL = 3.0


async def stream_opens(client: Client, message_id: str) -> bool:
    """Whether ResumeReply gets a slot now (True), or is refused for the stream limit (False)."""
    call = client.resume(message_id)
    try:
        return (await call.read()).event.HasField("started")
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
            raise
        return False
    finally:
        call.cancel()


async def renewed_once(url: str, key: str) -> None:
    """Until the one stream in `key` has had its expiry pushed back by its replica."""
    client = redis.asyncio.Redis.from_url(url)
    try:
        [(_, first)] = await client.zrange(key, 0, -1, withscores=True)

        async def renewed() -> bool:
            return any(score > first for _, score in await client.zrange(key, 0, -1, withscores=True))

        await poll_until(renewed, within=STREAM_TTL * 2, interval=0.05)
    finally:
        await client.aclose()


async def test_the_streams_of_a_killed_replica_free_themselves_within_the_ttl(
    servers: ServerFactory, postgres_database: str, redis_server: str, redis_prefix: str
) -> None:
    env = {
        "CHAT_REDIS_URL": redis_server,
        "CHAT_REDIS_KEY_PREFIX": redis_prefix,
        "CHAT_REDIS_STREAM_TTL_SECONDS": str(STREAM_TTL),
        "CHAT_MAX_CONCURRENT_STREAMS": "1",
        "CHAT_FAKE_TOKENS_PER_SECOND": "10",
    }
    a, b = servers(postgres_database, **env), servers(postgres_database, **env)
    key = mint_key(a, "dies-with-streams")
    on_a, on_b = Client(a, key), Client(b, key)
    try:
        call = on_a.stream(await on_a.conversation(), "hold the only slot")
        message_id = (await call.read()).event.started.assistant_message.message_id
        assert not await stream_opens(on_b, message_id)  # A's stream counts on B
        await renewed_once(redis_server, f"{redis_prefix}streams:dies-with-streams")  # A keeps it alive

        a.signal(signal.SIGKILL)
        killed = time.monotonic()
        assert a.wait() == -signal.SIGKILL
        assert not await stream_opens(on_b, message_id)  # still: nothing tells B that A is gone

        await poll_until(lambda: stream_opens(on_b, message_id), within=STREAM_TTL + 5, interval=0.05)
        freed_after = time.monotonic() - killed
        assert freed_after <= STREAM_TTL + 0.5, f"freed {freed_after:.2f} s after the kill"
    finally:
        await on_a.close()
        await on_b.close()
