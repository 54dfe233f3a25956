"""Limits shared by two replicas through Redis (CHAT_REDIS_URL): one user's rate and open streams count on
whichever replica their calls land; with Redis gone each replica limits on its own, and shares again when
Redis is back."""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio

from chat.v1 import chat_pb2 as pb
from tests.conftest import REQUIRE_REDIS
from tests.e2e.process import poll_until
from tests.integration.harness import Replica, running_replica, settings_for
from tests.integration.test_limits_rpc import retry_info
from tests.private_redis import PrivateRedis

Pair = tuple[Replica, Replica]
LIMITS_LOGGER = "service.ratelimit.redis"


@contextlib.asynccontextmanager
async def two_replicas(database_url: str, **settings: Any) -> AsyncIterator[Pair]:
    def named(name: str):  # type: ignore[no-untyped-def]
        return settings_for(database_url, replica_id=name, **settings)

    async with running_replica(named("replica-a")) as a, running_replica(named("replica-b")) as b:
        yield a, b


async def list_conversations(replica: Replica, user: str) -> None:
    await replica.stub.ListConversations(pb.ListConversationsRequest(), metadata=await replica.auth(user))


async def refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.value.details()
    return error.value


async def open_stream(replica: Replica, user: str) -> grpc.aio.UnaryStreamCall:
    """A reply stream, read up to its `started` event (a slot is held from then until the call ends)."""
    conversation = await replica.conversation(user)
    call = replica.stub.StreamReply(
        pb.StreamReplyRequest(conversation_id=conversation.conversation_id, content="hold a slot"),
        metadata=await replica.auth(user),
    )
    assert (await call.read()).event.HasField("started")
    return call


async def test_two_replicas_share_one_request_rate(database_url: str, redis_server: str, redis_prefix: str) -> None:
    async with two_replicas(
        database_url, rate_limit_per_minute=6, redis_url=redis_server, redis_key_prefix=redis_prefix
    ) as (a, b):
        for replica in (a, b, a, b, a, b):
            await list_conversations(replica, "alice")

        for replica in (a, b):
            error = await refused(list_conversations(replica, "alice"))
            assert 0 < retry_info(error).retry_delay.ToTimedelta().total_seconds() <= 10  # one every 60/6 s
        await list_conversations(b, "bob")  # per user


async def test_two_replicas_share_one_users_stream_slots(
    database_url: str, redis_server: str, redis_prefix: str
) -> None:
    async with two_replicas(
        database_url,
        max_concurrent_streams=2,
        fake_tokens_per_second=20,
        fake_reply_tokens=400,
        redis_url=redis_server,
        redis_key_prefix=redis_prefix,
    ) as (a, b):
        on_a, on_b = await open_stream(a, "alice"), await open_stream(b, "alice")
        for replica in (a, b):
            error = await refused(open_stream(replica, "alice"))
            assert retry_info(error).retry_delay.ToTimedelta().total_seconds() > 0
        bobs = await open_stream(a, "bob")  # per user

        on_b.cancel()  # B gives its slot back in Redis as the stream ends
        client = redis.asyncio.Redis.from_url(redis_server)
        try:

            async def one_left() -> bool:
                return bool(await client.zcard(f"{redis_prefix}streams:alice") == 1)

            await poll_until(one_left, within=10, interval=0.02)
        finally:
            await client.aclose()
        again = await open_stream(a, "alice")
        for call in (on_a, bobs, again):
            call.cancel()


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    root = Path(tempfile.mkdtemp(prefix="chat-test-redis-"))
    try:
        server = PrivateRedis(root)
    except FileNotFoundError as error:
        if REQUIRE_REDIS:
            pytest.fail(f"a private Redis server is required (CHAT_TEST_REQUIRE_REDIS=1): {error}")
        pytest.skip(f"cannot run a private Redis server: {error}")
    server.start()
    yield server
    server.kill()
    for path in root.iterdir():
        path.unlink()
    root.rmdir()


def limit_records(caplog: pytest.LogCaptureFixture, words: str) -> int:
    return sum(words in record.getMessage() for record in caplog.records if record.name == LIMITS_LOGGER)


async def test_without_redis_each_replica_limits_on_its_own_until_redis_is_back(
    database_url: str, private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, LIMITS_LOGGER)
    async with two_replicas(
        database_url,
        rate_limit_per_minute=4,
        max_concurrent_streams=1,
        fake_tokens_per_second=20,
        fake_reply_tokens=400,
        redis_url=private_redis.url,
        redis_key_prefix="outage:",
    ) as (a, b):
        for replica in (a, b, a, b):
            await list_conversations(replica, "alice")
        await refused(list_conversations(a, "alice"))  # shared: 2 + 2

        private_redis.kill()
        # Each replica now limits on its own: 4 each, refused after (RESOURCE_EXHAUSTED, never another error).
        for replica in (a, b):
            for _ in range(4):
                await list_conversations(replica, "carol")
            await refused(list_conversations(replica, "carol"))
        streams = [await open_stream(a, "dave"), await open_stream(b, "dave")]  # one each
        await refused(open_stream(a, "dave"))
        assert limit_records(caplog, "redis unreachable") == 2  # once per replica, however many calls

        private_redis.start()  # empty: a new server on the same port
        for replica in (a, b):
            await recovered(replica, caplog)
        for replica in (a, b, a, b):
            await list_conversations(replica, "erin")
        await refused(list_conversations(b, "erin"))  # shared again
        assert limit_records(caplog, "redis unreachable") == 2
        for call in streams:
            call.cancel()


async def recovered(replica: Replica, caplog: pytest.LogCaptureFixture) -> None:
    """Call `replica` until it logs that Redis is back (it asks again a second after a failure)."""
    before = limit_records(caplog, "redis reachable again")

    async def back() -> bool:
        call = replica.stub.ListConversations(pb.ListConversationsRequest(), metadata=await replica.auth("probe"))
        code = await call.code()  # OK, or RESOURCE_EXHAUSTED by its own limit until then; nothing else
        assert code in (grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED), code
        return limit_records(caplog, "redis reachable again") > before

    await poll_until(back, within=10, interval=0.05)
