"""What only the Ollama adapter does, against a real HTTP server speaking Ollama's wire format on 127.0.0.1.
What every provider does is tests/contract/test_provider_port.py."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from service.domain import ModelFailed, ModelInfo
from service.llm.ollama import OllamaProvider
from tests.contract.providers import collect, prompt
from tests.wire.ollama_server import OllamaServer

pytestmark = pytest.mark.timeout(10)

MODEL = "llama3.2"


@pytest.fixture
async def server() -> AsyncIterator[OllamaServer]:
    async with OllamaServer() as running:
        yield running


@pytest.fixture
async def provider(server: OllamaServer) -> AsyncIterator[OllamaProvider]:
    adapter = OllamaProvider(server.url, timeout=5)
    yield adapter
    await adapter.aclose()


async def test_sends_model_messages_and_reply_limit(provider: OllamaProvider, server: OllamaServer) -> None:
    await collect(provider, prompt(MODEL, max_tokens=37))

    (body,) = server.chat_requests
    assert body["model"] == MODEL
    assert body["stream"] is True
    assert body["options"]["num_predict"] == 37
    assert [(m["role"], m["content"]) for m in body["messages"]] == [
        ("system", "You are terse."),
        ("user", "Hi"),
        ("assistant", "Hello."),
        ("user", "How are you?"),
    ]


async def test_lists_the_models_from_tags(provider: OllamaProvider) -> None:
    models = await provider.list_models()

    assert models == [
        ModelInfo("llama3.2:latest", "ollama", "llama", "3.2B", "Q4_K_M", 2_019_393_189),
        ModelInfo("qwen2.5:0.5b", "ollama", "qwen2", "494.03M", "Q4_K_M", 397_821_319),
    ]


async def test_a_url_that_is_not_an_ollama_api_is_not_reported_as_a_missing_model(server: OllamaServer) -> None:
    provider = OllamaProvider(server.url + "/not-ollama", timeout=5)
    try:
        with pytest.raises(ModelFailed, match="HTTP 404"):
            await collect(provider, prompt(MODEL))
    finally:
        await provider.aclose()
