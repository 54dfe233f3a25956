"""The whole service against servers speaking the OpenAI and Ollama wire formats: every provider offers its
configured default model by the configured name, and a stored reply says whether its token counts are the
server's or the service's estimates."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from chat.v1 import chat_pb2 as pb
from service.domain import estimate_tokens
from tests.integration.harness import Replica, running_replica, settings_for
from tests.wire.ollama_server import ChatScript, OllamaServer, TagModel
from tests.wire.openai_server import OpenAIServer

pytestmark = pytest.mark.timeout(30)

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"  # what a llama.cpp server lists: its model file


@pytest.fixture
async def llama_cpp_server() -> AsyncIterator[OpenAIServer]:
    """Like `llama-server`: lists its file name, answers whatever model a request names."""
    async with OpenAIServer(models=[GGUF_FILE], any_model=True) as server:
        yield server


async def models(replica: Replica) -> list[tuple[str, str, bool]]:
    response = await replica.stub.ListModels(pb.ListModelsRequest(), metadata=await replica.auth("alice"))
    return [(m.name, m.provider, m.default) for m in response.models]


async def reply(replica: Replica, conversation: pb.Conversation, content: str) -> pb.Message:
    """Stream a reply to its end, then read the assistant message back from storage."""
    metadata = await replica.auth("alice")
    request = pb.StreamReplyRequest(conversation_id=conversation.conversation_id, content=content)
    async for response in replica.stub.StreamReply(request, metadata=metadata):
        if response.event.HasField("completed"):
            break
    listing = await replica.stub.ListMessages(
        pb.ListMessagesRequest(conversation_id=conversation.conversation_id), metadata=metadata
    )
    return listing.messages[-1]


# ------------------------------------------------------------------------------------------- openai


async def test_the_default_openai_model_is_offered_and_accepted_though_the_server_lists_a_file(
    database_url: str, llama_cpp_server: OpenAIServer
) -> None:
    settings = settings_for(database_url, llm_provider="openai", llm_url=llama_cpp_server.url)
    async with running_replica(settings) as replica:
        assert await models(replica) == [(GGUF_FILE, "openai", False), ("default", "openai", True)]

        conversation = await replica.conversation("alice", model="default")
        message = await reply(replica, conversation, "hello")

    assert (conversation.model, message.status, message.content) == (
        "default",
        pb.MESSAGE_STATUS_COMPLETED,
        "Hello, world!",
    )
    assert llama_cpp_server.chat_requests[-1]["model"] == "default"


async def test_a_served_name_configured_as_default_is_listed_once(database_url: str) -> None:
    async with OpenAIServer(models=["Qwen/Qwen2.5-0.5B-Instruct", "other"]) as vllm:
        settings = settings_for(
            database_url, llm_provider="openai", llm_url=vllm.url, default_model="Qwen/Qwen2.5-0.5B-Instruct"
        )
        async with running_replica(settings) as replica:
            listed = await models(replica)
            unknown = replica.stub.CreateConversation(
                pb.CreateConversationRequest(model="default"), metadata=await replica.auth("alice")
            )
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await unknown

    assert listed == [("Qwen/Qwen2.5-0.5B-Instruct", "openai", True), ("other", "openai", False)]
    # Only the configured default is taken on trust: "default" is not it here.
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "default" in (refused.value.details() or "")


@pytest.mark.parametrize(
    ("script", "usage"),
    [
        (ChatScript(prompt_tokens=23), pb.Usage(prompt_tokens=23, completion_tokens=4, estimated=False)),
        (ChatScript(prompt_tokens=None), None),  # estimated: see below
    ],
    ids=["server-counted", "estimated"],
)
async def test_openai_usage_is_stored_with_where_it_came_from(
    database_url: str, llama_cpp_server: OpenAIServer, script: ChatScript, usage: pb.Usage | None
) -> None:
    llama_cpp_server.enqueue(script)
    settings = settings_for(database_url, llm_provider="openai", llm_url=llama_cpp_server.url)
    async with running_replica(settings) as replica:
        message = await reply(replica, await replica.conversation("alice"), "hello there")

    # Estimated: the prompt by `estimate_tokens` per message sent (one: the user's), the reply by pieces.
    expected = usage or pb.Usage(prompt_tokens=estimate_tokens("hello there"), completion_tokens=4, estimated=True)
    assert message.usage == expected


# ------------------------------------------------------------------------------------------- ollama


async def test_the_default_ollama_model_is_listed_by_its_configured_name(database_url: str) -> None:
    async with OllamaServer() as ollama:  # lists llama3.2:latest
        settings = settings_for(database_url, llm_provider="ollama", llm_url=ollama.url, default_model="llama3.2")
        async with running_replica(settings) as replica:
            assert await models(replica) == [("llama3.2", "ollama", True), ("qwen2.5:0.5b", "ollama", False)]


async def test_a_default_ollama_model_not_pulled_yet_is_still_offered(database_url: str) -> None:
    async with OllamaServer(models=[TagModel("qwen2.5:0.5b")]) as ollama:
        settings = settings_for(database_url, llm_provider="ollama", llm_url=ollama.url, default_model="llama3.2:1b")
        async with running_replica(settings) as replica:
            listed = await models(replica)
            conversation = await replica.conversation("alice", model="llama3.2:1b")

    assert listed == [("llama3.2:1b", "ollama", True), ("qwen2.5:0.5b", "ollama", False)]
    assert conversation.model == "llama3.2:1b"


@pytest.mark.parametrize(
    ("script", "usage"),
    [
        (ChatScript(prompt_tokens=19, completion_tokens=4), pb.Usage(prompt_tokens=19, completion_tokens=4)),
        (ChatScript(prompt_tokens=None), None),
    ],
    ids=["server-counted", "estimated"],
)
async def test_ollama_usage_is_stored_with_where_it_came_from(
    database_url: str, script: ChatScript, usage: pb.Usage | None
) -> None:
    async with OllamaServer() as ollama:
        ollama.enqueue(script)
        settings = settings_for(database_url, llm_provider="ollama", llm_url=ollama.url, default_model="llama3.2")
        async with running_replica(settings) as replica:
            message = await reply(replica, await replica.conversation("alice"), "hello there")

    expected = usage or pb.Usage(prompt_tokens=estimate_tokens("hello there"), completion_tokens=4, estimated=True)
    assert message.usage == expected
