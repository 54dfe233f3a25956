"""StreamReply / ResumeReply / CancelReply / SendMessage over a real server, on SQLite and Postgres."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest

from chat.v1 import chat_pb2 as pb
from service.llm.fake import scripted_tokens
from tests.integration.harness import Replica


async def collect(call: grpc.aio.UnaryStreamCall) -> tuple[list[pb.ReplyEvent], str]:
    """The rest of a reply stream (read() style, so it can follow earlier read() calls)."""
    events = []
    while (response := await call.read()) is not grpc.aio.EOF:
        events.append(response.event)
    text = "".join(e.delta.text for e in events if e.WhichOneof("event") == "delta")
    return events, text


def assert_contiguous(events: list[pb.ReplyEvent], start: int = 0) -> None:
    cursor = start
    for event in events:
        if event.WhichOneof("event") == "delta":
            assert event.delta.offset == cursor
            assert event.delta.text
            cursor += len(event.delta.text)


async def test_stream_reply_streams_a_stored_reply(replica: Replica) -> None:
    conversation = await replica.conversation("alice")
    auth = await replica.auth("alice")
    call = replica.stub.StreamReply(
        pb.StreamReplyRequest(conversation_id=conversation.conversation_id, content="Hello there"),
        metadata=auth,
    )
    events, text = await collect(call)

    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "started" and kinds[-1] == "completed" and set(kinds[1:-1]) == {"delta"}
    assert_contiguous(events)
    started, completed = events[0].started, events[-1].completed.message
    assert started.user_message.content == "Hello there"
    assert started.assistant_message.status == pb.MESSAGE_STATUS_STREAMING
    assert completed.status == pb.MESSAGE_STATUS_COMPLETED
    assert completed.content == text == "".join(scripted_tokens("Hello there", 64))
    assert completed.usage.completion_tokens == 64
    assert completed.finish_reason == pb.FINISH_REASON_STOP

    listed = await replica.stub.ListMessages(
        pb.ListMessagesRequest(conversation_id=conversation.conversation_id), metadata=auth
    )
    assert [(m.role, m.content, m.status) for m in listed.messages] == [
        (pb.ROLE_USER, "Hello there", pb.MESSAGE_STATUS_COMPLETED),
        (pb.ROLE_ASSISTANT, text, pb.MESSAGE_STATUS_COMPLETED),
    ]


async def test_disconnect_does_not_stop_the_reply(slow_replica: Replica) -> None:
    replica = slow_replica
    conversation = await replica.conversation("alice")
    auth = await replica.auth("alice")
    call = replica.stub.StreamReply(
        pb.StreamReplyRequest(conversation_id=conversation.conversation_id, content="keep going"),
        metadata=auth,
    )
    started = (await call.read()).event.started
    first = (await call.read()).event.delta
    assert first.offset == 0
    call.cancel()  # the client goes away mid-reply

    message_id = started.assistant_message.message_id
    final = await wait_for_status(replica, "alice", conversation.conversation_id, message_id)
    assert final.status == pb.MESSAGE_STATUS_COMPLETED
    assert final.content == "".join(scripted_tokens("keep going", 64))


async def wait_for_status(replica: Replica, user: str, conversation_id: str, message_id: str) -> pb.Message:
    auth = await replica.auth(user)
    async with asyncio.timeout(10):
        while True:
            listed = await replica.stub.ListMessages(
                pb.ListMessagesRequest(conversation_id=conversation_id), metadata=auth
            )
            message = next(m for m in listed.messages if m.message_id == message_id)
            if message.status != pb.MESSAGE_STATUS_STREAMING:
                return message
            await asyncio.sleep(0.05)


async def test_resume_from_a_mid_offset_in_flight_and_finished(slow_replica: Replica) -> None:
    replica = slow_replica
    conversation = await replica.conversation("alice")
    auth = await replica.auth("alice")
    call = replica.stub.StreamReply(
        pb.StreamReplyRequest(conversation_id=conversation.conversation_id, content="resume me"),
        metadata=auth,
    )
    message_id = (await call.read()).event.started.assistant_message.message_id
    received = ""
    while len(received) < 20:
        received += (await call.read()).event.delta.text
    call.cancel()

    resumed = replica.stub.ResumeReply(
        pb.ResumeReplyRequest(message_id=message_id, offset=len(received)), metadata=auth
    )
    events, rest = await collect(resumed)
    assert events[0].started.assistant_message.message_id == message_id
    assert_contiguous(events, start=len(received))
    expected = "".join(scripted_tokens("resume me", 64))
    assert received + rest == expected == events[-1].completed.message.content

    # The same offset after the reply has finished: served from the database.
    again = replica.stub.ResumeReply(pb.ResumeReplyRequest(message_id=message_id, offset=7), metadata=auth)
    events, rest = await collect(again)
    assert rest == expected[7:]
    assert events[-1].completed.message.status == pb.MESSAGE_STATUS_COMPLETED


async def test_resume_past_the_end_is_out_of_range(replica: Replica) -> None:
    conversation = await replica.conversation("alice")
    auth = await replica.auth("alice")
    reply = await replica.stub.SendMessage(
        pb.SendMessageRequest(conversation_id=conversation.conversation_id, content="hi"), metadata=auth
    )
    length = len(reply.message.content)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await collect(
            replica.stub.ResumeReply(
                pb.ResumeReplyRequest(message_id=reply.message.message_id, offset=length + 1), metadata=auth
            )
        )
    assert error.value.code() == grpc.StatusCode.OUT_OF_RANGE
    _, empty = await collect(
        replica.stub.ResumeReply(
            pb.ResumeReplyRequest(message_id=reply.message.message_id, offset=length), metadata=auth
        )
    )
    assert empty == ""


async def test_cancel_stops_a_reply_in_flight(slow_replica: Replica) -> None:
    replica = slow_replica
    conversation = await replica.conversation("alice")
    auth = await replica.auth("alice")
    call = replica.stub.StreamReply(
        pb.StreamReplyRequest(conversation_id=conversation.conversation_id, content="stop me"), metadata=auth
    )
    message_id = (await call.read()).event.started.assistant_message.message_id
    await call.read()

    cancelled = (await replica.stub.CancelReply(pb.CancelReplyRequest(message_id=message_id), metadata=auth)).message
    assert cancelled.status == pb.MESSAGE_STATUS_CANCELLED
    full = "".join(scripted_tokens("stop me", 64))
    assert 0 < len(cancelled.content) < len(full) and full.startswith(cancelled.content)

    events, _text = await collect(call)  # the open stream ends with the cancelled message
    assert events[-1].completed.message.status == pb.MESSAGE_STATUS_CANCELLED
    assert events[-1].completed.message.content == cancelled.content

    again = (await replica.stub.CancelReply(pb.CancelReplyRequest(message_id=message_id), metadata=auth)).message
    assert again.status == pb.MESSAGE_STATUS_CANCELLED  # idempotent


async def test_cancel_a_finished_reply_is_failed_precondition(replica: Replica) -> None:
    conversation = await replica.conversation("alice")
    auth = await replica.auth("alice")
    reply = await replica.stub.SendMessage(
        pb.SendMessageRequest(conversation_id=conversation.conversation_id, content="hi"), metadata=auth
    )
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await replica.stub.CancelReply(pb.CancelReplyRequest(message_id=reply.message.message_id), metadata=auth)
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_retry_with_the_same_request_id_attaches_to_the_same_reply(slow_replica: Replica) -> None:
    replica = slow_replica
    conversation = await replica.conversation("alice")
    auth = await replica.auth("alice")
    request = pb.StreamReplyRequest(
        conversation_id=conversation.conversation_id, content="only once", request_id=str(uuid.uuid4())
    )
    first = replica.stub.StreamReply(request, metadata=auth)
    started = (await first.read()).event.started
    first.cancel()

    events, text = await collect(replica.stub.StreamReply(request, metadata=auth))  # a retry, mid-reply
    assert events[0].started.assistant_message.message_id == started.assistant_message.message_id
    assert text == events[-1].completed.message.content == "".join(scripted_tokens("only once", 64))

    sent = await replica.stub.SendMessage(
        pb.SendMessageRequest(
            conversation_id=conversation.conversation_id, content="only once", request_id=request.request_id
        ),
        metadata=auth,
    )
    assert sent.message.message_id == started.assistant_message.message_id

    listed = await replica.stub.ListMessages(
        pb.ListMessagesRequest(conversation_id=conversation.conversation_id), metadata=auth
    )
    assert len(listed.messages) == 2  # one user message, one reply


async def test_request_id_reused_for_another_message_is_invalid(replica: Replica) -> None:
    conversation = await replica.conversation("alice")
    auth = await replica.auth("alice")
    request_id = str(uuid.uuid4())
    await replica.stub.SendMessage(
        pb.SendMessageRequest(conversation_id=conversation.conversation_id, content="a", request_id=request_id),
        metadata=auth,
    )
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await replica.stub.SendMessage(
            pb.SendMessageRequest(conversation_id=conversation.conversation_id, content="b", request_id=request_id),
            metadata=auth,
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_send_message_waits_or_returns_at_once_in_background(slow_replica: Replica) -> None:
    replica = slow_replica
    conversation = await replica.conversation("alice")
    auth = await replica.auth("alice")
    background = await replica.stub.SendMessage(
        pb.SendMessageRequest(conversation_id=conversation.conversation_id, content="later", background=True),
        metadata=auth,
    )
    assert background.message.status == pb.MESSAGE_STATUS_STREAMING
    assert background.user_message.content == "later"

    with pytest.raises(grpc.aio.AioRpcError) as busy:  # one reply at a time per conversation
        await replica.stub.SendMessage(
            pb.SendMessageRequest(conversation_id=conversation.conversation_id, content="again"),
            metadata=auth,
        )
    assert busy.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    _events, text = await collect(
        replica.stub.ResumeReply(pb.ResumeReplyRequest(message_id=background.message.message_id), metadata=auth)
    )
    assert text == "".join(scripted_tokens("later", 64))

    done = await replica.stub.SendMessage(
        pb.SendMessageRequest(conversation_id=conversation.conversation_id, content="now"), metadata=auth
    )
    assert done.message.status == pb.MESSAGE_STATUS_COMPLETED
    assert done.message.content == "".join(scripted_tokens("now", 64))
