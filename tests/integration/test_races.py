"""Races a hostile client can start on purpose, on both databases: retries of one request at the same instant
(finding F3), and deadlines that expire between the commit of the user message and the start of the reply
(finding F13)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
import time

import grpc
import pytest

from chat.v1 import chat_pb2 as pb
from tests.integration.harness import Replica

pytestmark = pytest.mark.timeout(120)


async def read_to_end(call: grpc.aio.UnaryStreamCall) -> list[pb.ReplyEvent]:
    return [response.event async for response in call]


async def time_to_started(replica: Replica) -> float:
    """The median time from StreamReply to its `started` event, on this machine, now."""
    metadata = await replica.auth("calibration")
    conversation = await replica.conversation("calibration")
    times = []
    for _ in range(7):
        began = time.perf_counter()
        request = pb.StreamReplyRequest(conversation_id=conversation.conversation_id, content="how fast?")
        call = replica.stub.StreamReply(request, metadata=metadata)
        await call.read()
        times.append(time.perf_counter() - began)
        while await call.read() is not grpc.aio.EOF:
            pass
    return statistics.median(times)


async def test_retries_of_one_request_id_at_the_same_instant_all_attach_to_one_reply(slow_replica: Replica) -> None:
    """F3: the request_id was looked up before the conversation lock; concurrent retries got FAILED_PRECONDITION."""
    replica = slow_replica
    conversation = await replica.conversation("alice")
    metadata = await replica.auth("alice")
    request = pb.StreamReplyRequest(conversation_id=conversation.conversation_id, content="hi", request_id="same-1")

    streams = await asyncio.wait_for(
        asyncio.gather(*(read_to_end(replica.stub.StreamReply(request, metadata=metadata)) for _ in range(6))), 30
    )

    ids = {events[0].started.assistant_message.message_id for events in streams}
    assert len(ids) == 1
    texts = {"".join(e.delta.text for e in events) for events in streams}
    finals = {events[-1].completed.message.content for events in streams}
    assert len(texts) == 1 and texts == finals
    listed = await replica.stub.ListMessages(
        pb.ListMessagesRequest(conversation_id=conversation.conversation_id), metadata=metadata
    )
    assert [m.role for m in listed.messages] == [pb.ROLE_USER, pb.ROLE_ASSISTANT]


async def test_a_deadline_between_commit_and_start_never_orphans_a_reply(replica: Replica) -> None:
    """F13: StreamReply calls with 1-120 ms deadlines left assistant rows nothing generated; the conversation
    then refused messages until the lease expired, and the reply read INTERRUPTED with no text."""
    users = [f"user-{n}" for n in range(100)]  # one each: the per-user stream limit is not what is tested here
    conversations = [await replica.conversation(user) for user in users]
    rng = random.Random(13)
    # Deadlines spread around the time the server takes to commit the user message and start the reply, so
    # that some expire while the commit is in flight (calibrated here: machines differ).
    start_time = await time_to_started(replica)

    async def hurried(user: str, conversation: pb.Conversation) -> None:
        metadata = await replica.auth(user)
        request = pb.StreamReplyRequest(conversation_id=conversation.conversation_id, content="quick?")
        call = replica.stub.StreamReply(request, metadata=metadata, timeout=rng.uniform(0.2, 1.2) * start_time)
        with contextlib.suppress(grpc.aio.AioRpcError):
            await read_to_end(call)
        assert await call.code() in (grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED)

    await asyncio.gather(*(hurried(u, c) for u, c in zip(users, conversations, strict=True)))

    for user, conversation in zip(users, conversations, strict=True):
        metadata = await replica.auth(user)
        listed = await replica.stub.ListMessages(
            pb.ListMessagesRequest(conversation_id=conversation.conversation_id), metadata=metadata
        )
        replies = [m for m in listed.messages if m.role == pb.ROLE_ASSISTANT]
        assert len(replies) == len(listed.messages) // 2
        for message in replies:
            # Followed to its end well within the lease (10 s): an orphan would only end when the lease expired.
            follow = replica.stub.ResumeReply(pb.ResumeReplyRequest(message_id=message.message_id), metadata=metadata)
            events = await asyncio.wait_for(read_to_end(follow), 3)
            final = events[-1].completed.message
            assert final.status == pb.MESSAGE_STATUS_COMPLETED and final.content
        # And the conversation takes the next message at once.
        sent = await replica.stub.SendMessage(
            pb.SendMessageRequest(conversation_id=conversation.conversation_id, content="still there?"),
            metadata=metadata,
            timeout=5,
        )
        assert sent.message.status == pb.MESSAGE_STATUS_COMPLETED
