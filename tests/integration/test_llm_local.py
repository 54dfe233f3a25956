"""The local adapter running the real bundled Gemma 3 270M through llama-cpp-python (~0.5 s to load)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from service.domain import ChatTurn, Completion, FinishReason, ModelNotFound, Prompt, Role
from service.llm.local import LocalProvider

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install chat-service[local])")

pytestmark = [pytest.mark.local_model, pytest.mark.timeout(60)]

MODEL = "gemma3-270m"
# A transcript that makes the base model count on for hundreds of tokens: long enough to cancel mid-way.
COUNTING = (
    ChatTurn(Role.USER, "Count to 100."),
    ChatTurn(Role.ASSISTANT, ", ".join(str(n) for n in range(1, 101))),
    ChatTurn(Role.USER, "Count to 100 again."),
)


async def collect(provider: LocalProvider, request: Prompt) -> list[str | Completion]:
    return [item async for item in provider.stream(request)]


def ask(text: str, max_tokens: int = 16) -> Prompt:
    return Prompt(model=MODEL, turns=(ChatTurn(Role.USER, text),), max_tokens=max_tokens)


@pytest.fixture
async def provider() -> AsyncIterator[LocalProvider]:
    local = LocalProvider(None, context_tokens=2048, threads=0)
    yield local
    await local.aclose()


async def test_streams_a_short_reply_then_one_completion(provider: LocalProvider) -> None:
    items = await collect(provider, ask("What is the capital of France?"))

    *pieces, completion = items
    assert pieces
    assert all(isinstance(piece, str) and piece for piece in pieces)
    assert "".join(str(piece) for piece in pieces).strip()
    assert not str(pieces[0]).startswith(" ")
    assert isinstance(completion, Completion)
    assert completion.finish_reason in (FinishReason.STOP, FinishReason.LENGTH)
    assert completion.usage.prompt_tokens > 10
    assert 1 <= completion.usage.completion_tokens <= 16


async def test_cancelling_the_consumer_stops_generation(provider: LocalProvider) -> None:
    received: list[str | Completion] = []
    some_pieces = asyncio.Event()

    async def consume() -> None:
        async for item in provider.stream(Prompt(MODEL, COUNTING, max_tokens=400)):
            received.append(item)
            if len(received) == 5:
                some_pieces.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(some_pieces.wait(), 20)
    handoff = provider._active  # reach in, deliberately: what the llama thread produced after the cancel
    assert handoff is not None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task  # returns once the thread has stopped (stream() awaits it)

    left = [handoff.queue.get_nowait() for _ in range(handoff.queue.qsize())]
    # Stopped after the token it was producing: not the hundreds of tokens up to max_tokens, nor their end.
    assert len(received) + len(left) < 50
    assert not any(isinstance(item, Completion) for item in received + left)
    reply = await collect(provider, ask("Say hello.", max_tokens=4))  # and the next reply runs normally
    assert isinstance(reply[-1], Completion)


async def test_replies_asked_at_once_take_turns(provider: LocalProvider) -> None:
    replies = await asyncio.gather(collect(provider, ask("Hi!", 8)), collect(provider, ask("Hello?", 8)))

    for reply in replies:
        assert isinstance(reply[-1], Completion)


async def test_unknown_model_is_model_not_found(provider: LocalProvider) -> None:
    with pytest.raises(ModelNotFound) as caught:
        await collect(provider, Prompt("llama3.2", (ChatTurn(Role.USER, "Hi"),), 8))

    assert caught.value.model == "llama3.2"


async def test_lists_the_bundled_model(provider: LocalProvider) -> None:
    (model,) = await provider.list_models()

    assert (model.name, model.provider, model.family) == (MODEL, "local", "gemma3")
    assert (model.parameter_size, model.quantization_level) == ("270M", "Q4_K_M")
    assert model.size_bytes > 200_000_000
