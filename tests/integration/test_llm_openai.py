"""The OpenAI-compatible adapter against a real HTTP server speaking the chat-completions SSE wire format."""

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
from service.llm.openai import OpenAIProvider
from tests.wire.openai_server import CompletionScript, OpenAIServer

pytestmark = pytest.mark.timeout(10)

API_KEY = "sk-test-key"
MODEL = "qwen2.5-0.5b-instruct"
TURNS = (
    ChatTurn(Role.SYSTEM, "You are terse."),
    ChatTurn(Role.USER, "Hi"),
    ChatTurn(Role.ASSISTANT, "Hello."),
    ChatTurn(Role.USER, "How are you?"),
)


def prompt(model: str = MODEL, max_tokens: int = 64) -> Prompt:
    return Prompt(model=model, turns=TURNS, max_tokens=max_tokens)


@pytest.fixture
async def server() -> AsyncIterator[OpenAIServer]:
    async with OpenAIServer(api_key=API_KEY) as running:
        yield running


@pytest.fixture
async def provider(server: OpenAIServer) -> AsyncIterator[OpenAIProvider]:
    adapter = OpenAIProvider(server.url, api_key=API_KEY, timeout=5)
    yield adapter
    await adapter.aclose()


async def collect(provider: OpenAIProvider, request: Prompt) -> list[str | Completion]:
    return [item async for item in provider.stream(request)]


async def pieces_before_error(provider: OpenAIProvider, request: Prompt) -> tuple[list[str | Completion], Exception]:
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


async def test_streams_pieces_in_order_then_one_completion(provider: OpenAIProvider) -> None:
    items = await collect(provider, prompt())

    assert items[:-1] == ["Hello", ",", " world", "!"]
    assert "".join(str(item) for item in items[:-1]) == "Hello, world!"
    assert items[-1] == Completion(FinishReason.STOP, Usage(prompt_tokens=12, completion_tokens=4))


async def test_sends_model_messages_limit_and_key(provider: OpenAIProvider, server: OpenAIServer) -> None:
    await collect(provider, prompt(max_tokens=37))

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


async def test_reply_cut_by_the_token_limit_finishes_with_length(provider: OpenAIProvider) -> None:
    items = await collect(provider, prompt(max_tokens=2))

    assert items == ["Hello", ",", Completion(FinishReason.LENGTH, Usage(prompt_tokens=12, completion_tokens=2))]


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("stop", FinishReason.STOP),
        ("length", FinishReason.LENGTH),
        ("content_filter", FinishReason.CONTENT_FILTER),
        ("tool_calls", FinishReason.STOP),
    ],
)
async def test_maps_the_finish_reason(
    provider: OpenAIProvider, server: OpenAIServer, reason: str, expected: FinishReason
) -> None:
    server.enqueue(CompletionScript(finish_reason=reason))

    items = await collect(provider, prompt())

    assert isinstance(items[-1], Completion)
    assert items[-1].finish_reason is expected


async def test_estimates_usage_when_the_server_reports_none(provider: OpenAIProvider, server: OpenAIServer) -> None:
    server.enqueue(CompletionScript(send_usage=False))

    items = await collect(provider, prompt())

    assert items[-1] == Completion(
        FinishReason.STOP, Usage(estimate_prompt_tokens(TURNS), completion_tokens=4, estimated=True)
    )


async def test_usage_from_the_server_is_not_estimated(provider: OpenAIProvider, server: OpenAIServer) -> None:
    server.enqueue(CompletionScript(prompt_tokens=31))

    items = await collect(provider, prompt())

    assert server.chat_requests[-1]["stream_options"] == {"include_usage": True}
    assert items[-1] == Completion(FinishReason.STOP, Usage(prompt_tokens=31, completion_tokens=4, estimated=False))


async def test_a_finish_reason_without_done_ends_the_reply(provider: OpenAIProvider, server: OpenAIServer) -> None:
    server.enqueue(CompletionScript(send_done=False))

    items = await collect(provider, prompt())

    assert items[-1] == Completion(FinishReason.STOP, Usage(prompt_tokens=12, completion_tokens=4))


async def test_lists_the_models(provider: OpenAIProvider) -> None:
    models = await provider.list_models()

    assert [m.name for m in models] == ["default", "qwen2.5-0.5b-instruct", "llama-3.2-3b-instruct"]
    assert models[0] == ModelInfo("default", "openai")


async def test_connection_refused_is_model_unavailable() -> None:
    provider = OpenAIProvider(f"http://127.0.0.1:{closed_port()}/v1", timeout=5)
    try:
        with pytest.raises(ModelUnavailable, match="cannot be reached"):
            await collect(provider, prompt())
        with pytest.raises(ModelUnavailable, match="cannot be reached"):
            await provider.list_models()
    finally:
        await provider.aclose()


async def test_no_answer_in_time_is_model_unavailable(server: OpenAIServer) -> None:
    server.enqueue(CompletionScript(delay=2.0))
    provider = OpenAIProvider(server.url, api_key=API_KEY, timeout=0.2)
    try:
        with pytest.raises(ModelUnavailable, match="in time"):
            await collect(provider, prompt())
    finally:
        await provider.aclose()


@pytest.mark.parametrize("status", [500, 502, 429])
async def test_server_errors_are_model_unavailable_without_the_body(
    provider: OpenAIProvider, server: OpenAIServer, status: int
) -> None:
    server.enqueue(CompletionScript(status=status, error="secret internal detail"))

    with pytest.raises(ModelUnavailable) as caught:
        await collect(provider, prompt())

    assert type(caught.value) is ModelUnavailable
    assert f"HTTP {status}" in caught.value.message
    assert "secret" not in caught.value.message


async def test_a_wrong_key_is_model_failed_with_the_reason_in_the_log(
    server: OpenAIServer, caplog: pytest.LogCaptureFixture
) -> None:
    provider = OpenAIProvider(server.url, api_key="sk-wrong", timeout=5)
    try:
        with pytest.raises(ModelFailed) as caught:
            await collect(provider, prompt())
    finally:
        await provider.aclose()

    assert caught.value.message == "the model provider rejected the request (HTTP 401)"
    assert any("Incorrect API key provided." in r.getMessage() for r in caplog.records)
    assert "sk-wrong" not in caught.value.message


async def test_unknown_model_is_model_not_found_naming_it(provider: OpenAIProvider) -> None:
    with pytest.raises(ModelNotFound) as caught:
        await collect(provider, prompt(model="no-such-model"))

    assert caught.value.model == "no-such-model"
    assert "no-such-model" in caught.value.message


async def test_a_bad_request_naming_a_missing_model_is_model_not_found(
    provider: OpenAIProvider, server: OpenAIServer
) -> None:
    server.enqueue(CompletionScript(status=400, error=f"The model `{MODEL}` does not exist."))

    with pytest.raises(ModelNotFound):
        await collect(provider, prompt())


async def test_error_event_mid_stream_is_model_failed_after_the_earlier_pieces(
    provider: OpenAIProvider, server: OpenAIServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.enqueue(CompletionScript(error_after=2, error="CUDA out of memory"))

    pieces, error = await pieces_before_error(provider, prompt())

    assert type(error) is ModelFailed
    assert "CUDA" not in str(error)  # the caller learns it failed; the log says why
    assert any("CUDA out of memory" in r.getMessage() for r in caplog.records)
    assert pieces == ["Hello", ","]


async def test_connection_dropped_mid_stream_is_model_failed(provider: OpenAIProvider, server: OpenAIServer) -> None:
    server.enqueue(CompletionScript(drop_after=3))

    pieces, error = await pieces_before_error(provider, prompt())

    assert type(error) is ModelFailed
    assert pieces == ["Hello", ",", " world"]


async def test_a_malformed_event_is_model_failed(provider: OpenAIProvider, server: OpenAIServer) -> None:
    server.enqueue(CompletionScript(malformed_after=1))

    pieces, error = await pieces_before_error(provider, prompt())

    assert type(error) is ModelFailed
    assert "malformed" in str(error)
    assert pieces == ["Hello"]


async def test_stream_ending_without_finish_or_done_is_model_failed(
    provider: OpenAIProvider, server: OpenAIServer
) -> None:
    server.enqueue(CompletionScript(end_after=2))

    pieces, error = await pieces_before_error(provider, prompt())

    assert type(error) is ModelFailed
    assert pieces == ["Hello", ","]


async def test_cancelling_the_consumer_closes_the_connection(provider: OpenAIProvider, server: OpenAIServer) -> None:
    server.enqueue(CompletionScript(pieces=["tick"] * 500, delay=0.01))
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


async def test_closing_the_stream_early_closes_the_connection(provider: OpenAIProvider, server: OpenAIServer) -> None:
    server.enqueue(CompletionScript(pieces=["tick"] * 500, delay=0.01))

    async with contextlib.aclosing(provider.stream(prompt(max_tokens=1000))) as stream:
        async for item in stream:
            assert item == "tick"
            break

    await asyncio.wait_for(server.client_gone.wait(), 2)
