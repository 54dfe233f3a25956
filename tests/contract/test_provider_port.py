"""`ports.Provider`: what every adapter promises its callers, run against the Ollama and OpenAI adapters (each
over a real HTTP server speaking its wire format) and, where a fake can play the part, the fakes the other
tests use (tests/fakes.py's ScriptedProvider, service/llm/fake.py's FakeProvider).

What differs between the adapters (the request each sends, model listings, format quirks) is tested in
tests/integration/test_llm_ollama.py and test_llm_openai.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from http import HTTPStatus

import pytest

from service.domain import (
    Completion,
    FinishReason,
    ModelFailed,
    ModelNotFound,
    ModelUnavailable,
    Usage,
)
from service.llm import estimate_prompt_tokens
from service.llm.fake import MODEL_NAME, FakeProvider, scripted_tokens
from service.llm.ollama import OllamaProvider
from service.llm.openai import OpenAIProvider
from service.ports import Provider
from tests.contract.providers import TURNS, collect, pieces_before_error, prompt
from tests.fakes import ScriptedProvider
from tests.net import free_port
from tests.wire.httpserver import ChatScript, ChatServer
from tests.wire.ollama_server import OllamaServer
from tests.wire.openai_server import OpenAIServer

pytestmark = pytest.mark.timeout(15)

API_KEY = "sk-test-key"
WIRE = ["ollama", "openai"]


@dataclass
class Backend:
    """A provider under test, and how to script its next reply."""

    provider: Provider
    model: str
    reply: Callable[[ChatScript], list[str]]  # scripts the next reply; returns the pieces it will stream
    server: ChatServer | None = None  # the wire-format server behind an adapter
    connect: Callable[[str, float], Provider] | None = None  # the adapter at another URL, with another timeout

    @property
    def wire(self) -> ChatServer:
        assert self.server is not None
        return self.server


def _wire_backend(kind: str, server: ChatServer) -> Backend:
    def connect(url: str, timeout: float) -> Provider:
        if kind == "ollama":
            return OllamaProvider(url, timeout=timeout)
        return OpenAIProvider(url, api_key=API_KEY, timeout=timeout)

    def reply(script: ChatScript) -> list[str]:
        server.enqueue(script)
        return list(script.pieces)

    model = "llama3.2" if kind == "ollama" else "qwen2.5-0.5b-instruct"
    return Backend(connect(server.url, 5), model, reply, server, connect)


def _scripted_backend() -> Backend:
    provider = ScriptedProvider()

    def reply(script: ChatScript) -> list[str]:
        provider.pieces, provider.delay, provider.fail_after = list(script.pieces), script.delay, script.error_after
        if script.status >= HTTPStatus.INTERNAL_SERVER_ERROR:
            provider.unavailable_times = provider.calls + 1
        return list(script.pieces)

    return Backend(provider, "scripted", reply)


def _fake_backend() -> Backend:
    reply_tokens = 6

    def reply(script: ChatScript) -> list[str]:
        return scripted_tokens(TURNS[-1].content, reply_tokens)  # its own words, whatever the script says

    return Backend(FakeProvider(reply_tokens=reply_tokens), MODEL_NAME, reply)


@contextlib.asynccontextmanager
async def backend_of(kind: str) -> AsyncIterator[Backend]:
    if kind in WIRE:
        server: ChatServer = OllamaServer() if kind == "ollama" else OpenAIServer(api_key=API_KEY)
        async with server:
            backend = _wire_backend(kind, server)
            try:
                yield backend
            finally:
                await backend.provider.aclose()
    else:
        backend = _scripted_backend() if kind == "scripted" else _fake_backend()
        yield backend
        await backend.provider.aclose()


@pytest.fixture(params=[*WIRE, "scripted", "fake"])
async def any_backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    async with backend_of(request.param) as backend:
        yield backend


@pytest.fixture(params=[*WIRE, "scripted"])
async def scriptable(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    """Backends whose failures a test can script."""
    async with backend_of(request.param) as backend:
        yield backend


@pytest.fixture(params=WIRE)
async def wire(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    """The adapters, each over its wire-format server."""
    async with backend_of(request.param) as backend:
        yield backend


# ------------------------------------------------------------------------------------------ every provider


async def test_streams_pieces_in_order_then_exactly_one_completion(any_backend: Backend) -> None:
    expected = any_backend.reply(ChatScript(pieces=("Hello", ",", " wörld", " 🙂")))

    items = await collect(any_backend.provider, prompt(any_backend.model))

    assert items[:-1] == expected
    assert isinstance(items[-1], Completion)
    assert not any(isinstance(item, Completion) for item in items[:-1])


async def test_an_unknown_model_is_model_not_found_naming_it(any_backend: Backend) -> None:
    with pytest.raises(ModelNotFound) as caught:
        await collect(any_backend.provider, prompt("no-such-model"))

    assert caught.value.model == "no-such-model"
    assert "no-such-model" in caught.value.message


async def test_an_unavailable_backend_is_model_unavailable_before_any_text(scriptable: Backend) -> None:
    scriptable.reply(ChatScript(status=HTTPStatus.SERVICE_UNAVAILABLE, error="secret internal detail"))

    pieces, error = await pieces_before_error(scriptable.provider, prompt(scriptable.model))

    assert type(error) is ModelUnavailable
    assert pieces == []
    assert "secret" not in error.message


async def test_a_failure_mid_stream_is_model_failed_after_the_earlier_pieces(scriptable: Backend) -> None:
    scriptable.reply(ChatScript(pieces=("one", " two", " three"), error_after=2, error="CUDA out of memory"))

    pieces, error = await pieces_before_error(scriptable.provider, prompt(scriptable.model))

    assert type(error) is ModelFailed
    assert pieces == ["one", " two"]
    assert "CUDA" not in error.message  # the caller learns that it failed; the log says why


# ------------------------------------------------------------------------------------------ the adapters


async def test_usage_reported_by_the_server_is_not_estimated(wire: Backend) -> None:
    wire.reply(ChatScript(prompt_tokens=31, completion_tokens=7))

    items = await collect(wire.provider, prompt(wire.model))

    assert items[-1] == Completion(FinishReason.STOP, Usage(prompt_tokens=31, completion_tokens=7, estimated=False))


async def test_usage_is_estimated_when_the_server_reports_none(wire: Backend) -> None:
    wire.reply(ChatScript(prompt_tokens=None))

    items = await collect(wire.provider, prompt(wire.model))

    assert items[-1] == Completion(
        FinishReason.STOP, Usage(estimate_prompt_tokens(TURNS), completion_tokens=4, estimated=True)
    )


async def test_a_reply_cut_by_the_token_limit_finishes_with_length(wire: Backend) -> None:
    items = await collect(wire.provider, prompt(wire.model, max_tokens=2))

    assert items == ["Hello", ",", Completion(FinishReason.LENGTH, Usage(prompt_tokens=12, completion_tokens=2))]


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("stop", FinishReason.STOP),
        ("length", FinishReason.LENGTH),
        ("content_filter", FinishReason.CONTENT_FILTER),
        ("unload", FinishReason.STOP),  # anything else is a normal stop
        ("", FinishReason.STOP),
    ],
)
async def test_maps_the_finish_reason(wire: Backend, reason: str, expected: FinishReason) -> None:
    wire.reply(ChatScript(finish_reason=reason))

    items = await collect(wire.provider, prompt(wire.model))

    assert isinstance(items[-1], Completion)
    assert items[-1].finish_reason is expected


async def test_an_unreachable_server_is_model_unavailable(wire: Backend) -> None:
    assert wire.connect is not None
    provider = wire.connect(f"http://127.0.0.1:{free_port()}", 5)
    try:
        with pytest.raises(ModelUnavailable, match="cannot be reached"):
            await collect(provider, prompt(wire.model))
        with pytest.raises(ModelUnavailable, match="cannot be reached"):
            await provider.list_models()
    finally:
        await provider.aclose()


@pytest.mark.parametrize(
    ("after", "expected"),
    [(0, ModelUnavailable), (2, ModelFailed)],  # no text yet: retryable; after text: the reply failed
    ids=["before-text", "mid-stream"],
)
async def test_silence_past_the_timeout_ends_the_call(wire: Backend, after: int, expected: type[Exception]) -> None:
    assert wire.connect is not None
    provider = wire.connect(wire.wire.url, 0.2)
    wire.reply(ChatScript(stall_after=after))
    try:
        pieces, error = await pieces_before_error(provider, prompt(wire.model))
    finally:
        await provider.aclose()

    assert type(error) is expected
    assert pieces == ["Hello", ","][:after]
    if after == 0:
        assert "in time" in error.message


@pytest.mark.parametrize("status", [500, 502, 503, 429])
async def test_server_errors_are_model_unavailable_without_the_body(wire: Backend, status: int) -> None:
    wire.reply(ChatScript(status=status, error="secret internal detail"))

    with pytest.raises(ModelUnavailable) as caught:
        await collect(wire.provider, prompt(wire.model))

    assert type(caught.value) is ModelUnavailable
    assert f"HTTP {status}" in caught.value.message
    assert "secret" not in caught.value.message


async def test_a_rejected_request_is_model_failed_with_the_reason_only_in_the_log(
    wire: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    wire.reply(ChatScript(status=400, error="top_logprobs must be between 0 and 20\n" + "x" * 500))

    with pytest.raises(ModelFailed) as caught:
        await collect(wire.provider, prompt(wire.model))

    assert caught.value.message == "the model provider rejected the request (HTTP 400)"
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("service.llm.")]
    assert any("top_logprobs must be between 0 and 20" in line and "x" * 200 not in line for line in logged)


async def test_an_error_mid_stream_is_logged_with_its_reason(wire: Backend, caplog: pytest.LogCaptureFixture) -> None:
    wire.reply(ChatScript(error_after=1, error="llama runner process has terminated"))

    with pytest.raises(ModelFailed):
        await collect(wire.provider, prompt(wire.model))

    assert any("llama runner process has terminated" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("ending", "said"),
    [
        ("drop_after", "connection to the .* server broke"),
        ("end_after", "ended the reply before it was complete"),
        ("garbage_after", "sent a malformed reply"),
    ],
    ids=["dropped", "ended-early", "garbage"],
)
async def test_a_broken_stream_is_model_failed_after_the_earlier_pieces(wire: Backend, ending: str, said: str) -> None:
    wire.reply(ChatScript(**{ending: 3}))  # type: ignore[arg-type]

    pieces, error = await pieces_before_error(wire.provider, prompt(wire.model))

    assert type(error) is ModelFailed
    assert re.search(said, error.message), error.message
    assert pieces == ["Hello", ",", " world"]


async def test_cancelling_the_consumer_closes_the_connection(wire: Backend) -> None:
    wire.reply(ChatScript(pieces=["tick"] * 500, delay=0.01))
    received: list[str | Completion] = []
    two_pieces = asyncio.Event()

    async def consume() -> None:
        async for item in wire.provider.stream(prompt(wire.model, max_tokens=1000)):
            received.append(item)
            if len(received) == 2:
                two_pieces.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(two_pieces.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    await asyncio.wait_for(wire.wire.client_gone.wait(), 5)
    assert len(received) < 500


async def test_closing_the_stream_early_closes_the_connection(wire: Backend) -> None:
    wire.reply(ChatScript(pieces=["tick"] * 500, delay=0.01))

    async with contextlib.aclosing(wire.provider.stream(prompt(wire.model, max_tokens=1000))) as stream:
        async for item in stream:
            assert item == "tick"
            break

    await asyncio.wait_for(wire.wire.client_gone.wait(), 5)


# ------------------------------------------------------------------------------------------ connections


def _chat_ports(backend: Backend) -> list[int]:
    return [r.client_port for r in backend.wire.requests if r.path.endswith(backend.wire.chat_path)]


async def test_replies_one_after_another_reuse_one_connection(wire: Backend) -> None:
    """A reply read to its end leaves its connection for the next: no connect (nor its CPU and latency) per reply,
    also when the body's end comes a moment after the last line, as from a server that flushed that line first."""
    for _ in range(3):
        wire.reply(ChatScript(end_delay=0.1))
        items = await collect(wire.provider, prompt(wire.model))
        assert isinstance(items[-1], Completion)

    ports = _chat_ports(wire)
    assert len(ports) == 3 and ports[0] != 0
    assert len(set(ports)) == 1, ports


async def test_a_body_left_open_after_its_last_line_completes_the_reply_and_its_connection_is_closed(
    wire: Backend,
) -> None:
    # A minute of read timeout: the reply completes because the adapter stops waiting for the body's end on
    # its own (after END_OF_BODY_SECONDS), not because reading timed out.
    assert wire.connect is not None
    provider = wire.connect(wire.wire.url, 60.0)
    try:
        wire.reply(ChatScript(linger=True))
        items = await collect(provider, prompt(wire.model))
        assert items[:-1] == list(ChatScript().pieces)
        assert isinstance(items[-1], Completion) and items[-1].finish_reason is FinishReason.STOP
        await asyncio.wait_for(wire.wire.client_gone.wait(), 5)  # that connection was closed, not pooled

        assert isinstance((await collect(provider, prompt(wire.model)))[-1], Completion)
        first, second = _chat_ports(wire)
        assert first != second
    finally:
        await provider.aclose()


async def test_bytes_after_the_last_line_are_ignored(wire: Backend) -> None:
    wire.reply(ChatScript(after_ending=b"surplus after the end\n"))
    items = await collect(wire.provider, prompt(wire.model))

    assert items[:-1] == list(ChatScript().pieces)
    assert isinstance(items[-1], Completion) and items[-1].finish_reason is FinishReason.STOP
    assert isinstance((await collect(wire.provider, prompt(wire.model)))[-1], Completion)
