"""What only the OpenAI-compatible adapter does, against a real HTTP server speaking the chat-completions SSE
wire format. What every provider does is tests/contract/test_provider_port.py."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from service.domain import Completion, FinishReason, ModelFailed, ModelInfo, ModelNotFound, Usage
from service.llm.openai import OpenAIProvider
from tests.contract.providers import collect, prompt
from tests.wire.openai_server import ChatScript, OpenAIServer

pytestmark = pytest.mark.timeout(10)

API_KEY = "sk-test-key"
MODEL = "qwen2.5-0.5b-instruct"


@pytest.fixture
async def server() -> AsyncIterator[OpenAIServer]:
    async with OpenAIServer(api_key=API_KEY) as running:
        yield running


@pytest.fixture
async def provider(server: OpenAIServer) -> AsyncIterator[OpenAIProvider]:
    adapter = OpenAIProvider(server.url, api_key=API_KEY, timeout=5)
    yield adapter
    await adapter.aclose()


async def test_sends_model_messages_limit_and_key(provider: OpenAIProvider, server: OpenAIServer) -> None:
    await collect(provider, prompt(MODEL, max_tokens=37))

    (request,) = server.requests
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    body = request.json()
    assert body["model"] == MODEL
    assert body["max_tokens"] == 37
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "How are you?"},
    ]


async def test_a_finish_reason_without_done_ends_the_reply(provider: OpenAIProvider, server: OpenAIServer) -> None:
    server.enqueue(ChatScript(send_done=False))

    items = await collect(provider, prompt(MODEL))

    assert items[-1] == Completion(FinishReason.STOP, Usage(prompt_tokens=12, completion_tokens=4))


async def test_lists_the_models(provider: OpenAIProvider) -> None:
    models = await provider.list_models()

    assert [m.name for m in models] == ["default", "qwen2.5-0.5b-instruct", "llama-3.2-3b-instruct"]
    assert models[0] == ModelInfo("default", "openai")


async def test_a_wrong_key_is_model_failed_with_the_reason_in_the_log(
    server: OpenAIServer, caplog: pytest.LogCaptureFixture
) -> None:
    provider = OpenAIProvider(server.url, api_key="sk-wrong", timeout=5)
    try:
        with pytest.raises(ModelFailed) as caught:
            await collect(provider, prompt(MODEL))
    finally:
        await provider.aclose()

    assert caught.value.message == "the model provider rejected the request (HTTP 401)"
    assert any("Incorrect API key provided." in r.getMessage() for r in caplog.records)
    assert "sk-wrong" not in caught.value.message


async def test_a_bad_request_naming_a_missing_model_is_model_not_found(
    provider: OpenAIProvider, server: OpenAIServer
) -> None:
    server.enqueue(ChatScript(status=400, error=f"The model `{MODEL}` does not exist."))

    with pytest.raises(ModelNotFound):
        await collect(provider, prompt(MODEL))
