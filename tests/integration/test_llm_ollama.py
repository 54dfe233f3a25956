"""The Ollama adapter against a real HTTP server speaking Ollama's wire format on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import pytest

from service.domain import (
    ChatTurn,
    Completion,
    DomainError,
    FinishReason,
    ModelFailed,
    ModelInfo,
    ModelNotFound,
    ModelUnavailable,
    Prompt,
    Role,
    Usage,
)
from service.llm import estimate_prompt_tokens
from service.llm.ollama import OllamaProvider
from tests.wire.ollama_server import ChatScript, OllamaServer

pytestmark = pytest.mark.timeout(10)

TURNS = (
    ChatTurn(Role.SYSTEM, "You are terse."),
    ChatTurn(Role.USER, "Hi"),
    ChatTurn(Role.ASSISTANT, "Hello."),
    ChatTurn(Role.USER, "How are you?"),
)


def prompt(model: str = "llama3.2", max_tokens: int = 64) -> Prompt:
    return Prompt(model=model, turns=TURNS, max_tokens=max_tokens)


@pytest.fixture
async def server() -> AsyncIterator[OllamaServer]:
    async with OllamaServer() as running:
        yield running


@pytest.fixture
async def provider(server: OllamaServer) -> AsyncIterator[OllamaProvider]:
    adapter = OllamaProvider(server.url, timeout=5)
    yield adapter
    await adapter.aclose()


async def collect(provider: OllamaProvider, request: Prompt) -> list[str | Completion]:
    return [item async for item in provider.stream(request)]


async def pieces_before_error(provider: OllamaProvider, request: Prompt) -> tuple[list[str | Completion], Exception]:
    """What the stream yielded before it raised, and what it raised."""
    pieces: list[str | Completion] = []
    try:
        async for item in provider.stream(request):
            pieces.append(item)
    except DomainError as exc:
        return pieces, exc
    raise AssertionError("the stream ended without an error")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_streams_pieces_in_order_then_one_completion(provider: OllamaProvider) -> None:
    items = await collect(provider, prompt())

    assert items[:-1] == ["Hello", ",", " world", "!"]
    assert "".join(str(item) for item in items[:-1]) == "Hello, world!"
    assert items[-1] == Completion(FinishReason.STOP, Usage(prompt_tokens=12, completion_tokens=4))


async def test_sends_model_messages_and_reply_limit(provider: OllamaProvider, server: OllamaServer) -> None:
    await collect(provider, prompt(max_tokens=37))

    (body,) = server.chat_requests
    assert body["model"] == "llama3.2"
    assert body["stream"] is True
    assert body["options"]["num_predict"] == 37
    assert [(m["role"], m["content"]) for m in body["messages"]] == [
        ("system", "You are terse."),
        ("user", "Hi"),
        ("assistant", "Hello."),
        ("user", "How are you?"),
    ]


async def test_reply_cut_by_the_token_limit_finishes_with_length(provider: OllamaProvider) -> None:
    items = await collect(provider, prompt(max_tokens=2))

    assert items == ["Hello", ",", Completion(FinishReason.LENGTH, Usage(prompt_tokens=12, completion_tokens=2))]


@pytest.mark.parametrize(
    ("done_reason", "expected"),
    [
        ("stop", FinishReason.STOP),
        ("length", FinishReason.LENGTH),
        ("unload", FinishReason.STOP),
        ("", FinishReason.STOP),
    ],
)
async def test_maps_the_done_reason(
    provider: OllamaProvider, server: OllamaServer, done_reason: str, expected: FinishReason
) -> None:
    server.enqueue(ChatScript(done_reason=done_reason))

    items = await collect(provider, prompt())

    assert isinstance(items[-1], Completion)
    assert items[-1].finish_reason is expected


async def test_estimates_usage_when_the_server_reports_none(provider: OllamaProvider, server: OllamaServer) -> None:
    server.enqueue(ChatScript(prompt_eval_count=None))

    items = await collect(provider, prompt())

    assert items[-1] == Completion(
        FinishReason.STOP, Usage(estimate_prompt_tokens(TURNS), completion_tokens=4, estimated=True)
    )


async def test_usage_from_the_server_is_not_estimated(provider: OllamaProvider, server: OllamaServer) -> None:
    server.enqueue(ChatScript(prompt_eval_count=31, eval_count=7))

    items = await collect(provider, prompt())

    assert items[-1] == Completion(FinishReason.STOP, Usage(prompt_tokens=31, completion_tokens=7, estimated=False))


async def test_lists_the_models_from_tags(provider: OllamaProvider) -> None:
    models = await provider.list_models()

    assert models == [
        ModelInfo("llama3.2:latest", "ollama", "llama", "3.2B", "Q4_K_M", 2_019_393_189),
        ModelInfo("qwen2.5:0.5b", "ollama", "qwen2", "494.03M", "Q4_K_M", 397_821_319),
    ]


async def test_connection_refused_is_model_unavailable() -> None:
    provider = OllamaProvider(f"http://127.0.0.1:{closed_port()}", timeout=5)
    try:
        with pytest.raises(ModelUnavailable, match="cannot be reached"):
            await collect(provider, prompt())
        with pytest.raises(ModelUnavailable, match="cannot be reached"):
            await provider.list_models()
    finally:
        await provider.aclose()


async def test_no_answer_in_time_is_model_unavailable(server: OllamaServer) -> None:
    server.enqueue(ChatScript(delay=2.0))
    provider = OllamaProvider(server.url, timeout=0.2)
    try:
        with pytest.raises(ModelUnavailable, match="in time"):
            await collect(provider, prompt())
    finally:
        await provider.aclose()


@pytest.mark.parametrize("status", [500, 503, 429])
async def test_server_errors_are_model_unavailable_without_the_body(
    provider: OllamaProvider, server: OllamaServer, status: int
) -> None:
    server.enqueue(ChatScript(status=status, error="secret internal detail"))

    with pytest.raises(ModelUnavailable) as caught:
        await collect(provider, prompt())

    assert type(caught.value) is ModelUnavailable
    assert f"HTTP {status}" in caught.value.message
    assert "secret" not in caught.value.message


async def test_bad_request_is_model_failed_with_the_reason_only_in_the_log(
    provider: OllamaProvider, server: OllamaServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.enqueue(ChatScript(status=400, error="top_logprobs must be between 0 and 20\n" + "x" * 500))

    with pytest.raises(ModelFailed) as caught:
        await collect(provider, prompt())

    assert caught.value.message == "the model provider rejected the request (HTTP 400)"
    logged = [r.getMessage() for r in caplog.records if r.name == "service.llm.ollama"]
    assert any("top_logprobs must be between 0 and 20" in line and "x" * 200 not in line for line in logged)


async def test_unknown_model_is_model_not_found_naming_it(provider: OllamaProvider) -> None:
    with pytest.raises(ModelNotFound) as caught:
        await collect(provider, prompt(model="no-such-model"))

    assert caught.value.model == "no-such-model"
    assert "no-such-model" in caught.value.message


async def test_a_url_that_is_not_an_ollama_api_is_not_reported_as_a_missing_model(server: OllamaServer) -> None:
    provider = OllamaProvider(server.url + "/not-ollama", timeout=5)
    try:
        with pytest.raises(ModelFailed, match="HTTP 404"):
            await collect(provider, prompt())
    finally:
        await provider.aclose()


async def test_error_line_mid_stream_is_model_failed_after_the_earlier_pieces(
    provider: OllamaProvider, server: OllamaServer
) -> None:
    server.enqueue(ChatScript(error_after=2, error="llama runner process has terminated"))

    pieces, error = await pieces_before_error(provider, prompt())

    assert type(error) is ModelFailed
    assert pieces == ["Hello", ","]


async def test_error_line_mid_stream_logs_its_reason_and_keeps_it_from_callers(
    provider: OllamaProvider, server: OllamaServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.enqueue(ChatScript(error_after=1, error="llama runner process has terminated"))

    with pytest.raises(ModelFailed) as caught:
        await collect(provider, prompt())

    assert "llama runner" not in caught.value.message
    assert any("llama runner process has terminated" in r.getMessage() for r in caplog.records)


async def test_connection_dropped_mid_stream_is_model_failed(provider: OllamaProvider, server: OllamaServer) -> None:
    server.enqueue(ChatScript(drop_after=3))

    pieces, error = await pieces_before_error(provider, prompt())

    assert type(error) is ModelFailed
    assert pieces == ["Hello", ",", " world"]


async def test_stream_ending_without_the_final_chunk_is_model_failed(
    provider: OllamaProvider, server: OllamaServer
) -> None:
    server.enqueue(ChatScript(end_after=2))

    pieces, error = await pieces_before_error(provider, prompt())

    assert type(error) is ModelFailed
    assert pieces == ["Hello", ","]


async def test_cancelling_the_consumer_closes_the_connection(provider: OllamaProvider, server: OllamaServer) -> None:
    server.enqueue(ChatScript(pieces=["tick"] * 500, delay=0.01))
    received: list[str | Completion] = []
    two_pieces = asyncio.Event()

    async def consume() -> None:
        async for item in provider.stream(prompt(max_tokens=1000)):
            received.append(item)
            if len(received) == 2:
                two_pieces.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(two_pieces.wait(), 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    await asyncio.wait_for(server.client_gone.wait(), 2)
    assert len(received) < 500


async def test_closing_the_stream_early_closes_the_connection(provider: OllamaProvider, server: OllamaServer) -> None:
    server.enqueue(ChatScript(pieces=["tick"] * 500, delay=0.01))

    async with contextlib.aclosing(provider.stream(prompt(max_tokens=1000))) as stream:
        async for item in stream:
            assert item == "tick"
            break

    await asyncio.wait_for(server.client_gone.wait(), 2)
