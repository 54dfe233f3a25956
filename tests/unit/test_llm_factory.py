"""`build_provider` picks and configures the adapter the settings name, without touching the network."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest

from service.domain import ChatTurn, Completion, Prompt, Role
from service.llm import build_provider
from service.llm.fake import MODEL_NAME, FakeProvider
from service.llm.local import LocalProvider
from service.llm.ollama import OllamaProvider
from service.llm.openai import OpenAIProvider
from service.ports import Provider
from service.settings import Settings

pytestmark = pytest.mark.timeout(30)


def settings(**values: object) -> Settings:
    return Settings.model_validate(values)


@pytest.fixture
async def built() -> AsyncIterator[list[Provider]]:
    """Providers built by a test, closed after it."""
    providers: list[Provider] = []
    yield providers
    for provider in providers:
        await provider.aclose()


async def test_fake_uses_the_configured_reply_length(built: list[Provider]) -> None:
    provider = build_provider(settings(llm_provider="fake", fake_reply_tokens=3, fake_tokens_per_second=0))
    built.append(provider)

    items = [item async for item in provider.stream(Prompt(MODEL_NAME, (ChatTurn(Role.USER, "hi"),), 50))]

    assert isinstance(provider, FakeProvider)
    assert len(items) == 4
    assert isinstance(items[-1], Completion)


async def test_ollama(built: list[Provider]) -> None:
    provider = build_provider(settings(llm_provider="ollama", llm_url="http://127.0.0.1:1"))
    built.append(provider)

    assert isinstance(provider, OllamaProvider)
    assert provider.name == "ollama"


async def test_openai(built: list[Provider]) -> None:
    provider = build_provider(settings(llm_provider="openai", llm_api_key="sk-test"))
    built.append(provider)

    assert isinstance(provider, OpenAIProvider)
    assert provider.name == "openai"


async def test_local_loads_nothing_until_first_use(built: list[Provider]) -> None:
    # find_spec, not an import: llama_cpp is only ever imported by the model's worker process.
    assert importlib.util.find_spec("llama_cpp") is not None, "llama-cpp-python is not installed (make test does)"
    provider = build_provider(settings(llm_provider="local", local_context_tokens=1024))
    built.append(provider)

    assert isinstance(provider, LocalProvider)
    assert provider.name == "local"
    assert "llama_cpp" not in sys.modules


@pytest.mark.parametrize("name", ["fake", "ollama", "openai"])
def test_only_local_imports_llama_cpp(name: str) -> None:
    # A fresh interpreter: whether this process has imported llama_cpp already depends on the tests run.
    script = (
        "import sys\n"
        "from service.llm import build_provider\n"
        "from service.settings import Settings\n"
        f"build_provider(Settings(llm_provider={name!r}))\n"
        "assert 'llama_cpp' not in sys.modules, 'llama_cpp was imported'\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=20)
