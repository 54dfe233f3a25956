"""Retries, resume and error details at the stub level, on grpcio-testing's fake channel."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from chat.v1 import chat_pb2 as pb
from chat_client import (
    ChatClient,
    InvalidArgument,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from tests.clients.conftest import FAST_RETRY
from tests.clients.fake_channel import METHODS, ThreadedStub, fake_channel, in_thread

CONVERSATION = "6f1c1a52-5f7c-4a51-9b0e-1f6d3b1f2a11"
REPLY = "a6a5c7c4-7d44-4a44-8a55-77a1f7d0b0c2"


def started() -> pb.StreamReplyResponse:
    assistant = pb.Message(message_id=REPLY, role=pb.ROLE_ASSISTANT, status=pb.MESSAGE_STATUS_STREAMING)
    return pb.StreamReplyResponse(event=pb.ReplyEvent(started=pb.ReplyStarted(assistant_message=assistant)))


def delta(text: str, offset: int, kind: type[Any] = pb.StreamReplyResponse) -> Any:
    return kind(event=pb.ReplyEvent(delta=pb.ReplyDelta(text=text, offset=offset)))


def completed(content: str, kind: type[Any] = pb.StreamReplyResponse) -> Any:
    message = pb.Message(message_id=REPLY, content=content, status=pb.MESSAGE_STATUS_COMPLETED)
    return kind(event=pb.ReplyEvent(completed=pb.ReplyCompleted(message=message)))


def status_metadata(code: int, message: str, *details: Any) -> tuple[tuple[str, bytes], ...]:
    packed = []
    for detail in details:
        any_detail = status_pb2.Status().details.add()
        any_detail.Pack(detail)
        packed.append(any_detail)
    status = status_pb2.Status(code=code, message=message, details=packed)
    return (("grpc-status-details-bin", status.SerializeToString()),)


async def play(server: Callable[[], Any], client_side: Any) -> tuple[Any, Any]:
    """Run the client coroutine and the scripted server (blocking, on a thread) together."""
    return await asyncio.wait_for(asyncio.gather(client_side, in_thread(server)), timeout=20)


async def test_idempotent_call_is_retried_on_unavailable() -> None:
    channel = fake_channel()
    client = ChatClient(stub=ThreadedStub(channel), retry=FAST_RETRY)

    def server() -> list[str]:
        seen = []
        for attempt in range(3):
            _, request, rpc = channel.take_unary_unary(METHODS["GetConversation"])
            seen.append(request.conversation_id)
            if attempt < 2:
                rpc.terminate(None, (), grpc.StatusCode.UNAVAILABLE, "connection refused")
            else:
                found = pb.Conversation(conversation_id=CONVERSATION, title="Found")
                rpc.terminate(pb.GetConversationResponse(conversation=found), (), grpc.StatusCode.OK, "")
        return seen

    conversation, seen = await play(server, client.get_conversation(CONVERSATION))
    assert conversation.title == "Found"
    assert seen == [CONVERSATION] * 3


async def test_retries_stop_after_the_policys_attempts() -> None:
    channel = fake_channel()
    client = ChatClient(stub=ThreadedStub(channel), retry=FAST_RETRY)

    def server() -> int:
        for _ in range(FAST_RETRY.attempts):
            _, _, rpc = channel.take_unary_unary(METHODS["ListConversations"])
            rpc.terminate(None, (), grpc.StatusCode.UNAVAILABLE, "down")
        return FAST_RETRY.attempts

    async def call() -> Unavailable:
        with pytest.raises(Unavailable) as failed:
            await client.list_conversations()
        return failed.value

    error, attempts = await play(server, call())
    assert error.message == "down" and attempts == FAST_RETRY.attempts


async def test_create_is_not_retried_and_errors_carry_details() -> None:
    channel = fake_channel()
    client = ChatClient(stub=ThreadedStub(channel), retry=FAST_RETRY)

    def server() -> None:
        _, _, rpc = channel.take_unary_unary(METHODS["CreateConversation"])
        rpc.terminate(None, (), grpc.StatusCode.UNAVAILABLE, "down")
        violation = error_details_pb2.BadRequest.FieldViolation(field="title", description="too long")
        bad = error_details_pb2.BadRequest(field_violations=[violation])
        info = error_details_pb2.ErrorInfo(reason="INVALID_ARGUMENT", domain="chat-service")
        _, _, rpc = channel.take_unary_unary(METHODS["GetConversation"])
        trailers = status_metadata(code_pb2.INVALID_ARGUMENT, "invalid title", bad, info)
        rpc.terminate(None, trailers, grpc.StatusCode.INVALID_ARGUMENT, "invalid title")
        retry = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=2, nanos=500_000_000))
        _, _, rpc = channel.take_unary_unary(METHODS["SearchMessages"])
        trailers = status_metadata(code_pb2.RESOURCE_EXHAUSTED, "slow down", retry)
        rpc.terminate(None, trailers, grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down")

    async def calls() -> tuple[Unavailable, InvalidArgument, ResourceExhausted]:
        with pytest.raises(Unavailable) as unavailable:
            await client.create_conversation(title="x")
        with pytest.raises(InvalidArgument) as invalid:
            await client.get_conversation(CONVERSATION)
        with pytest.raises(ResourceExhausted) as exhausted:
            await client.search_messages("anything")
        return unavailable.value, invalid.value, exhausted.value

    (unavailable, invalid, exhausted), _ = await play(server, calls())
    assert unavailable.code == grpc.StatusCode.UNAVAILABLE
    assert [(v.field, v.description) for v in invalid.violations] == [("title", "too long")]
    assert invalid.reason == "INVALID_ARGUMENT"
    assert exhausted.retry_delay == 2.5


async def test_a_broken_reply_stream_resumes_from_the_last_offset() -> None:
    channel = fake_channel()
    client = ChatClient(stub=ThreadedStub(channel), retry=FAST_RETRY)
    stream = client.stream_reply(CONVERSATION, "hi", request_id="req-1")
    got_hel = threading.Event()
    texts: list[str] = []

    async def consume() -> None:
        async for event in stream:
            if event.WhichOneof("event") == "delta":
                texts.append(event.delta.text)
                if stream.offset >= 3:
                    got_hel.set()

    def server() -> pb.ResumeReplyRequest:
        _, request, rpc = channel.take_unary_stream(METHODS["StreamReply"])
        assert request.request_id == "req-1"
        rpc.send_response(started())
        rpc.send_response(delta("Hel", 0))
        assert got_hel.wait(10)
        rpc.terminate((), grpc.StatusCode.UNAVAILABLE, "Socket closed")
        _, resume, rpc = channel.take_unary_stream(METHODS["ResumeReply"])
        kind = pb.ResumeReplyResponse
        rpc.send_response(kind(event=started().event))
        rpc.send_response(delta("ello", 1, kind))  # overlaps what was delivered: trimmed, not repeated
        rpc.send_response(delta(" wörld 🙂", 5, kind))
        rpc.send_response(completed("Hello wörld 🙂", kind))
        rpc.terminate((), grpc.StatusCode.OK, "")
        return resume

    _, resume = await play(server, consume())
    assert (resume.message_id, resume.offset) == (REPLY, 3)
    assert "".join(texts) == "Hello wörld 🙂" == stream.text
    assert texts == ["Hel", "lo", " wörld 🙂"]
    assert stream.message is not None and stream.message.status == pb.MESSAGE_STATUS_COMPLETED
    assert stream.resumes == 1


async def test_a_stream_broken_before_it_started_is_retried_with_the_same_request_id() -> None:
    channel = fake_channel()
    client = ChatClient(stub=ThreadedStub(channel), retry=FAST_RETRY)
    stream = client.stream_reply(CONVERSATION, "hi")

    def server() -> list[str]:
        _, first, rpc = channel.take_unary_stream(METHODS["StreamReply"])
        rpc.terminate((), grpc.StatusCode.UNAVAILABLE, "connection reset")
        _, second, rpc = channel.take_unary_stream(METHODS["StreamReply"])
        rpc.send_response(started())
        rpc.send_response(delta("ok", 0))
        rpc.send_response(completed("ok"))
        rpc.terminate((), grpc.StatusCode.OK, "")
        return [first.request_id, second.request_id]

    message, request_ids = await play(server, stream.result())
    assert message.content == "ok" and stream.text == "ok"
    assert request_ids[0] == request_ids[1] != ""


async def test_a_stream_that_ends_without_completed_is_resumed() -> None:
    channel = fake_channel()
    client = ChatClient(stub=ThreadedStub(channel), retry=FAST_RETRY)
    stream = client.stream_reply(CONVERSATION, "hi")

    def server() -> int:
        _, _, rpc = channel.take_unary_stream(METHODS["StreamReply"])
        rpc.send_response(started())
        rpc.send_response(delta("ab", 0))
        rpc.terminate((), grpc.StatusCode.OK, "")
        _, resume, rpc = channel.take_unary_stream(METHODS["ResumeReply"])
        rpc.send_response(delta("c", 2, pb.ResumeReplyResponse))
        rpc.send_response(completed("abc", pb.ResumeReplyResponse))
        rpc.terminate((), grpc.StatusCode.OK, "")
        return int(resume.offset)

    message, offset = await play(server, stream.result())
    assert offset == 2 and stream.text == "abc" == message.content


async def test_errors_other_than_unavailable_end_the_stream() -> None:
    channel = fake_channel()
    client = ChatClient(stub=ThreadedStub(channel), retry=FAST_RETRY)

    def server() -> None:
        _, _, rpc = channel.take_unary_stream(METHODS["StreamReply"])
        rpc.terminate((), grpc.StatusCode.PERMISSION_DENIED, "not yours")

    async def call() -> PermissionDenied:
        with pytest.raises(PermissionDenied) as failed:
            await client.stream_reply(CONVERSATION, "hi").result()
        return failed.value

    error, _ = await play(server, call())
    assert error.message == "not yours"


async def test_text_the_server_lost_in_a_crash_ends_the_stream_with_the_stored_reply() -> None:
    channel = fake_channel()
    client = ChatClient(stub=ThreadedStub(channel), retry=FAST_RETRY)
    stream = client.stream_reply(CONVERSATION, "hi")
    delivered = threading.Event()

    async def consume() -> pb.Message:
        async for _ in stream:
            if stream.offset == 9:
                delivered.set()
        assert stream.message is not None
        return stream.message

    def server() -> list[int]:
        _, _, rpc = channel.take_unary_stream(METHODS["StreamReply"])
        rpc.send_response(started())
        rpc.send_response(delta("Hello wor", 0))
        assert delivered.wait(10)
        rpc.terminate((), grpc.StatusCode.UNAVAILABLE, "Socket closed")
        # Restarted: only "Hello" had been flushed, and the reply is now INTERRUPTED.
        _, past_end, rpc = channel.take_unary_stream(METHODS["ResumeReply"])
        rpc.terminate((), grpc.StatusCode.OUT_OF_RANGE, "offset 9 is past the end of the reply (5)")
        _, replay, rpc = channel.take_unary_stream(METHODS["ResumeReply"])
        kind = pb.ResumeReplyResponse
        rpc.send_response(delta("Hello", 0, kind))
        message = pb.Message(message_id=REPLY, content="Hello", status=pb.MESSAGE_STATUS_INTERRUPTED)
        rpc.send_response(kind(event=pb.ReplyEvent(completed=pb.ReplyCompleted(message=message))))
        rpc.terminate((), grpc.StatusCode.OK, "")
        return [past_end.offset, replay.offset]

    message, offsets = await play(server, consume())
    assert offsets == [9, 0]
    assert stream.text == "Hello wor" and message.content == "Hello"
    assert message.status == pb.MESSAGE_STATUS_INTERRUPTED


async def test_resuming_past_the_end_on_purpose_is_out_of_range() -> None:
    channel = fake_channel()
    client = ChatClient(stub=ThreadedStub(channel), retry=FAST_RETRY)

    def server() -> None:
        _, _, rpc = channel.take_unary_stream(METHODS["ResumeReply"])
        rpc.terminate((), grpc.StatusCode.OUT_OF_RANGE, "past the end")

    async def call() -> OutOfRange:
        with pytest.raises(OutOfRange) as failed:
            await client.resume_reply(REPLY, 99).result()
        return failed.value

    error, _ = await play(server, call())
    assert error.message == "past the end"
