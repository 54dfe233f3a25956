"""`chat` against a chat-service that is up while its model provider is not (nothing listens on the Ollama
port, or the Ollama server answers nonsense): every command says it is the model, with the server's reason,
and exits 5 — never "cannot reach chat-service"."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chat_client.errors import MODEL_REASONS
from service.domain import ModelFailed, ModelUnavailable
from tests.clients.terminal import TerminalSession, chat_env, run_chat
from tests.integration.harness import Replica, running_replica, settings_for
from tests.net import free_port
from tests.wire.ollama_server import ChatScript, OllamaServer, TagModel

EXIT_MODEL = 5
UNREACHABLE = "the ollama server cannot be reached"


def ollama_at(url: str) -> dict[str, str]:
    return {"llm_provider": "ollama", "llm_url": url, "default_model": "llama3.2"}


@pytest.fixture
async def modelless(sqlite_url: str) -> AsyncIterator[Replica]:
    """chat-service up; its Ollama URL is a port nothing listens on."""
    settings = settings_for(sqlite_url, **ollama_at(f"http://127.0.0.1:{free_port()}"))
    async with running_replica(settings) as running:
        yield running


@pytest.fixture
async def ollama() -> AsyncIterator[OllamaServer]:
    async with OllamaServer() as server:
        yield server


@pytest.fixture
async def with_ollama(sqlite_url: str, ollama: OllamaServer) -> AsyncIterator[Replica]:
    async with running_replica(settings_for(sqlite_url, **ollama_at(ollama.url))) as running:
        yield running


async def env_for(replica: Replica, tmp_path: Path) -> dict[str, str]:
    return chat_env(replica.address, await replica.key("alice"), tmp_path)


async def test_models_when_the_provider_is_unreachable(modelless: Replica, tmp_path: Path) -> None:
    for args in (["models"], ["--json", "models"]):
        code, out, err = await run_chat(*args, env=await env_for(modelless, tmp_path))
        assert code == EXIT_MODEL, err
        assert f"the model provider is unavailable: {UNREACHABLE}" in err
        assert "cannot reach chat-service" not in err and out == ""


async def test_models_when_the_provider_answers_nonsense(sqlite_url: str, tmp_path: Path) -> None:
    garbled = TagModel("llama3.2:latest", size="a lot")  # type: ignore[arg-type]  # not a size: a malformed list
    async with (
        OllamaServer(models=[garbled]) as ollama,
        running_replica(settings_for(sqlite_url, **ollama_at(ollama.url))) as replica,
    ):
        code, _, err = await run_chat("models", env=await env_for(replica, tmp_path))
    assert code == EXIT_MODEL, err
    assert "the model provider is unavailable: the ollama server sent a malformed model list" in err
    # Asked once: chat-service answered, so the client does not repeat the call as it would a lost one.
    assert [r.path for r in ollama.requests] == ["/api/tags"]


async def test_ask_and_history_show_why_the_reply_failed(modelless: Replica, tmp_path: Path) -> None:
    env = await env_for(modelless, tmp_path)
    code, out, err = await run_chat("ask", "Anyone there?", env=env)
    assert code == EXIT_MODEL, err
    assert out == ""
    assert f"the reply failed: {UNREACHABLE}" in err

    conversation_id = err.split("· conversation ", 1)[1].split()[0]
    code, out, err = await run_chat("history", conversation_id, env=env)
    assert code == 0, err
    assert f"[failed: {UNREACHABLE}]" in out


async def test_ask_shows_why_a_reply_failed_halfway(with_ollama: Replica, ollama: OllamaServer, tmp_path: Path) -> None:
    env = await env_for(with_ollama, tmp_path)
    ollama.enqueue(ChatScript(pieces=["Once", " upon", " a", " time"], error_after=2))
    code, out, err = await run_chat("ask", "Tell me a story", env=env)
    assert code == EXIT_MODEL, err
    assert out == "Once upon\n"
    assert "the reply failed: the model provider failed while generating the reply" in err

    ollama.enqueue(ChatScript(pieces=["Once", " upon", " a", " time"], error_after=2))
    code, out, err = await run_chat("--json", "ask", "Tell me a story", env=env)
    assert code == EXIT_MODEL, err
    message = json.loads(out)["message"]
    assert message["status"] == "MESSAGE_STATUS_FAILED" and message["content"] == "Once upon"
    assert message["error_message"] in err


async def test_coach_when_the_provider_is_unreachable(modelless: Replica, tmp_path: Path) -> None:
    env = await env_for(modelless, tmp_path)
    code, _, err = await run_chat("coach", "english_buddy", env=env, stdin="Hi, I goed to school.\n")
    assert code == EXIT_MODEL, err
    assert f"the model provider is unavailable: {UNREACHABLE}" in err and "cannot reach" not in err


async def test_interactive_chat_starts_and_says_why_replies_fail(modelless: Replica, tmp_path: Path) -> None:
    session = await TerminalSession.start(env=await env_for(modelless, tmp_path))
    try:
        await session.expect(f"the model provider is unavailable: {UNREACHABLE}")
        await session.expect("you> ")
        session.send("Anyone there?\n")
        answer = await session.expect("you> ")
        assert f"the reply failed: {UNREACHABLE}" in answer and "FAILED" in answer
        session.send("/list\n")  # what needs no model still works
        await session.expect("Anyone there?")
        session.send("/quit\n")
        assert await session.wait() == 0
    finally:
        await session.close()
    assert "cannot reach" not in session.screen


def test_the_client_knows_the_servers_model_reasons() -> None:
    # The client tells a model outage by the ErrorInfo reasons the server sends (service/rpc/errors.py).
    assert {ModelUnavailable.reason, ModelFailed.reason} == MODEL_REASONS
