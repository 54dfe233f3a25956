"""The whole service against a server speaking Ollama's wire format: provider failures become precise
statuses, and the stored reply says what happened."""

from __future__ import annotations

from collections.abc import AsyncIterator
from http import HTTPStatus

import grpc
import pytest

from chat.v1 import chat_pb2 as pb
from tests.integration.harness import Replica, running_replica, settings_for
from tests.integration.rpc_errors import error_info
from tests.net import free_port
from tests.wire.ollama_server import ChatScript, OllamaServer


@pytest.fixture
async def ollama() -> AsyncIterator[OllamaServer]:
    async with OllamaServer() as server:
        yield server


@pytest.fixture
async def replica(database_url: str, ollama: OllamaServer) -> AsyncIterator[Replica]:
    settings = settings_for(database_url, llm_provider="ollama", llm_url=ollama.url, default_model="llama3.2")
    async with running_replica(settings, provider=None) as running:
        yield running


async def stream(replica: Replica, content: str) -> tuple[list[pb.ReplyEvent], grpc.aio.AioRpcError | None]:
    conversation = await replica.conversation("alice")
    call = replica.stub.StreamReply(
        pb.StreamReplyRequest(conversation_id=conversation.conversation_id, content=content),
        metadata=await replica.auth("alice"),
    )
    events: list[pb.ReplyEvent] = []
    try:
        async for response in call:
            events.append(response.event)
    except grpc.aio.AioRpcError as error:
        return events, error
    return events, None


async def stored(replica: Replica, message_id: str) -> pb.Message:
    call = replica.stub.ResumeReply(pb.ResumeReplyRequest(message_id=message_id), metadata=await replica.auth("alice"))
    return (await call.read()).event.started.assistant_message


async def test_a_reply_streams_from_ollama(replica: Replica, ollama: OllamaServer) -> None:
    events, error = await stream(replica, "hello")
    assert error is None
    assert "".join(e.delta.text for e in events if e.HasField("delta")) == "Hello, world!"
    final = events[-1].completed.message
    assert final.content == "Hello, world!" and final.usage.prompt_tokens == 12 and final.usage.completion_tokens == 4
    assert ollama.chat_requests[-1]["messages"][-1] == {"role": "user", "content": "hello"}


async def test_mid_stream_error_fails_the_reply_with_its_partial_text(replica: Replica, ollama: OllamaServer) -> None:
    ollama.enqueue(ChatScript(pieces=["Once", " upon", " a", " time"], error_after=2))
    events, error = await stream(replica, "tell me a story")
    assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(error).reason == "MODEL_FAILED"
    assert "llama runner" not in (error.details() or "")  # upstream internals stay inside
    assert "".join(e.delta.text for e in events if e.HasField("delta")) == "Once upon"
    message = await stored(replica, events[0].started.assistant_message.message_id)
    assert message.status == pb.MESSAGE_STATUS_FAILED
    assert message.content == "Once upon" and message.error_message


async def test_dropped_connection_mid_stream_fails_the_reply(replica: Replica, ollama: OllamaServer) -> None:
    ollama.enqueue(ChatScript(pieces=["a", "b", "c"], drop_after=1))
    events, error = await stream(replica, "x")
    assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE
    message = await stored(replica, events[0].started.assistant_message.message_id)
    assert (message.status, message.content) == (pb.MESSAGE_STATUS_FAILED, "a")


async def test_unavailable_before_the_first_token_is_retried(replica: Replica, ollama: OllamaServer) -> None:
    ollama.enqueue(ChatScript(status=HTTPStatus.SERVICE_UNAVAILABLE), ChatScript(status=HTTPStatus.BAD_GATEWAY))
    events, error = await stream(replica, "hello")
    assert error is None
    assert events[-1].completed.message.content == "Hello, world!"
    assert len(ollama.chat_requests) == 3


async def test_unknown_model_at_generation_is_failed_precondition(replica: Replica, ollama: OllamaServer) -> None:
    ollama.enqueue(ChatScript(status=HTTPStatus.NOT_FOUND, error="model 'llama3.2' not found"))
    events, error = await stream(replica, "hello")
    assert error is not None and error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "llama3.2" in (error.details() or "")
    message = await stored(replica, events[0].started.assistant_message.message_id)
    assert message.status == pb.MESSAGE_STATUS_FAILED
    assert len(ollama.chat_requests) == 1  # not retried: it would not help


async def test_unknown_model_at_creation_is_failed_precondition(replica: Replica) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await replica.conversation("alice", model="mistral")
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "mistral" in (error.value.details() or "")
    created = await replica.conversation("alice", model="qwen2.5:0.5b")
    assert created.model == "qwen2.5:0.5b"


async def test_unreachable_provider_is_unavailable_and_the_user_message_is_kept(database_url: str) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    settings = settings_for(database_url, llm_provider="ollama", llm_url=closed, default_model="llama3.2")
    async with running_replica(settings, provider=None) as replica:
        events, error = await stream(replica, "anyone there?")
        assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE
        assert error_info(error).reason == "MODEL_UNAVAILABLE"
        started = events[0].started
        listed = await replica.stub.ListMessages(
            pb.ListMessagesRequest(conversation_id=started.user_message.conversation_id),
            metadata=await replica.auth("alice"),
        )
        user, assistant = listed.messages
        assert (user.content, user.status) == ("anyone there?", pb.MESSAGE_STATUS_COMPLETED)
        assert (assistant.status, assistant.content) == (pb.MESSAGE_STATUS_FAILED, "")

        models = replica.stub.ListModels(pb.ListModelsRequest(), metadata=await replica.auth("alice"))
        with pytest.raises(grpc.aio.AioRpcError) as listing:
            await models
        assert listing.value.code() == grpc.StatusCode.UNAVAILABLE
