"""Per-user rate limits over a real server: RESOURCE_EXHAUSTED with google.rpc.RetryInfo."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from chat.v1 import chat_pb2 as pb
from tests.integration.coach_stream import CoachCall, start, turn
from tests.integration.harness import running_replica, settings_for


def retry_info(error: grpc.aio.AioRpcError) -> error_details_pb2.RetryInfo:
    status = rpc_status.from_call(error)
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info
    raise AssertionError("no RetryInfo detail")


async def read_all(call: grpc.aio.StreamStreamCall, kinds: list[str]) -> None:
    async with asyncio.timeout(30):
        async for response in call:
            kinds.append(str(response.WhichOneof("response")))


async def test_requests_over_the_per_minute_limit_are_refused_with_retry_info(database_url: str) -> None:
    settings = settings_for(database_url, rate_limit_per_minute=5)
    async with running_replica(settings) as replica:
        alice, bob = await replica.auth("alice"), await replica.auth("bob")
        for _ in range(5):
            await replica.stub.ListConversations(pb.ListConversationsRequest(), metadata=alice)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await replica.stub.ListConversations(pb.ListConversationsRequest(), metadata=alice)
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        delay = retry_info(error.value).retry_delay.ToTimedelta().total_seconds()
        assert 0 < delay <= 12  # one request comes back every 60/5 = 12 s
        # Streams are limited by the same bucket.
        with pytest.raises(grpc.aio.AioRpcError) as streaming:
            await replica.stub.ResumeReply(pb.ResumeReplyRequest(message_id="x"), metadata=alice).read()
        assert streaming.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # Per user: bob is not affected.
        await replica.stub.ListConversations(pb.ListConversationsRequest(), metadata=bob)


async def test_concurrent_streams_over_the_limit_are_refused(database_url: str) -> None:
    settings = settings_for(database_url, max_concurrent_streams=1, fake_tokens_per_second=20, fake_reply_tokens=200)
    async with running_replica(settings) as replica:
        alice = await replica.auth("alice")
        conversation = await replica.conversation("alice")
        first = replica.stub.StreamReply(
            pb.StreamReplyRequest(conversation_id=conversation.conversation_id, content="hi"), metadata=alice
        )
        started = (await first.read()).event.started
        second = replica.stub.ResumeReply(
            pb.ResumeReplyRequest(message_id=started.assistant_message.message_id), metadata=alice
        )
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await second.read()
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert retry_info(error.value).retry_delay.ToTimedelta().total_seconds() > 0
        # Unary calls are not streams; another user has slots of their own.
        await replica.stub.ListConversations(pb.ListConversationsRequest(), metadata=alice)
        bob_conversation = await replica.conversation("bob")
        bob = replica.stub.StreamReply(
            pb.StreamReplyRequest(conversation_id=bob_conversation.conversation_id, content="hi"),
            metadata=await replica.auth("bob"),
        )
        assert (await bob.read()).event.HasField("started")
        bob.cancel()
        first.cancel()
        # The slots are given back when the streams end (the server notices cancellations asynchronously).
        limiter = replica.app.deps.rate_limiter
        for _ in range(200):
            if limiter.open_streams == 0:
                break
            await asyncio.sleep(0.025)
        assert limiter.open_streams == 0
        again = replica.stub.ResumeReply(
            pb.ResumeReplyRequest(message_id=started.assistant_message.message_id), metadata=alice
        )
        assert (await again.read()).event.HasField("started")
        again.cancel()


async def test_each_coach_turn_takes_a_request_from_the_bucket(database_url: str) -> None:
    """One long-lived stream is no way around the limit: every turn (or end) is a request, refused with
    RESOURCE_EXHAUSTED and RetryInfo when over; the refused turn is not taken and the session can be rejoined."""
    settings = settings_for(database_url, rate_limit_per_minute=5)
    async with running_replica(settings) as replica:
        call = CoachCall(replica.stub, await replica.auth("alice"))
        session = (await call.begin(persona="english_buddy")).session  # the call (with its start): 1 request
        for _ in range(4):
            await call.ask(turn("One more question"), "turn_completed")

        await call.send(turn("And another one"))
        error = await call.error()

        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert 0 < retry_info(error).retry_delay.ToTimedelta().total_seconds() <= 12
        async with replica.app.deps.database.unit_of_work() as uow:
            stored = await uow.coaching_sessions.get(session.session_id)
        assert stored is not None and stored.turns_used == 4 and stored.stage.value == "active"


async def test_a_pipelined_burst_of_turns_is_limited_too(database_url: str) -> None:
    """60 turns written at once on one stream (as a script would): 4 answered, then RESOURCE_EXHAUSTED."""
    settings = settings_for(database_url, rate_limit_per_minute=5)
    async with running_replica(settings) as replica:
        requests = [start(persona="english_buddy"), *(turn(f"question {i}") for i in range(60))]
        call = replica.stub.Coach(iter(requests), metadata=await replica.auth("alice"))
        kinds = []
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await read_all(call, kinds)

        assert kinds.count("turn_completed") == 4
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert retry_info(error.value).retry_delay.ToTimedelta().total_seconds() > 0
