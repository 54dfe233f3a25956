"""The local adapter running the real bundled models through llama.cpp in its worker process.

The model never runs in this (pytest's) process: whatever the native code does, it can fail a test with the
adapter's own words ("the local model process crashed (SIGSEGV)"), never end the test run.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest

from service.domain import ChatTurn, Completion, FinishReason, ModelFailed, ModelNotFound, Prompt, Role
from service.llm.local import BUNDLED, LocalProvider
from service.llm.local_worker import X86_64_FLAGS, missing_cpu_features

pytestmark = [pytest.mark.local_model, pytest.mark.timeout(90)]

MODEL = "smollm2-135m"
# A request that makes the model write for hundreds of tokens: long enough to cancel or crash mid-way.
COUNTING = (ChatTurn(Role.USER, "Count from 1 to 300, separated by commas. Do not stop early."),)


async def collect(provider: LocalProvider, request: Prompt) -> list[str | Completion]:
    return [item async for item in provider.stream(request)]


def ask(text: str, max_tokens: int = 16, model: str = MODEL) -> Prompt:
    return Prompt(model=model, turns=(ChatTurn(Role.USER, text),), max_tokens=max_tokens)


@pytest.fixture
async def provider() -> AsyncIterator[LocalProvider]:
    local = LocalProvider(MODEL, context_tokens=2048, threads=0, stall_seconds=3.0)
    yield local
    await local.aclose()


async def test_streams_a_short_reply_then_one_completion(provider: LocalProvider) -> None:
    items = await collect(provider, ask("What is the capital of France?"))

    *pieces, completion = items
    assert pieces
    assert all(isinstance(piece, str) and piece for piece in pieces)
    assert "".join(str(piece) for piece in pieces).strip()
    assert not str(pieces[0]).startswith((" ", "\n"))
    assert isinstance(completion, Completion)
    assert completion.finish_reason in (FinishReason.STOP, FinishReason.LENGTH)
    assert completion.usage.prompt_tokens > 10
    assert 1 <= completion.usage.completion_tokens <= 16


async def test_the_model_runs_in_a_worker_process_not_in_this_one(provider: LocalProvider) -> None:
    await collect(provider, ask("Hi", 2))

    assert provider.worker_pid is not None and provider.worker_pid != os.getpid()
    assert "llama_cpp" not in sys.modules


async def _pieces_then(provider: LocalProvider, act: asyncio.Event, count: int = 5) -> list[str | Completion]:
    received: list[str | Completion] = []
    async for item in provider.stream(Prompt(MODEL, COUNTING, max_tokens=400)):
        received.append(item)
        if len(received) == count:
            act.set()
    return received


async def test_cancelling_the_consumer_stops_generation(provider: LocalProvider) -> None:
    some_pieces = asyncio.Event()
    task = asyncio.create_task(_pieces_then(provider, some_pieces))
    await asyncio.wait_for(some_pieces.wait(), 30)
    worker = provider._worker  # reach in, deliberately: what the worker produced after the cancel
    assert worker is not None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    reply = await collect(provider, ask("Say hello.", max_tokens=4))  # queued behind the stopped one

    assert isinstance(reply[-1], Completion)
    # Stopped at the token it was producing: not the hundreds of tokens up to max_tokens.
    assert worker.dropped < 50
    assert provider.restarts == 0


async def test_replies_asked_at_once_take_turns(provider: LocalProvider) -> None:
    replies = await asyncio.gather(collect(provider, ask("Hi!", 8)), collect(provider, ask("Hello?", 8)))

    for reply in replies:
        assert isinstance(reply[-1], Completion)


@pytest.mark.parametrize("signum", [signal.SIGSEGV, signal.SIGABRT, signal.SIGKILL], ids=lambda s: s.name)
async def test_a_worker_that_dies_mid_reply_fails_that_reply_and_the_next_one_works(
    provider: LocalProvider, signum: signal.Signals
) -> None:
    """A segfault, an abort or the OOM killer (SIGKILL) in the middle of a reply."""
    some_pieces = asyncio.Event()
    task = asyncio.create_task(_pieces_then(provider, some_pieces))
    await asyncio.wait_for(some_pieces.wait(), 30)
    pid = provider.worker_pid
    assert pid is not None
    os.kill(pid, signum)

    with pytest.raises(ModelFailed, match=rf"the local model process crashed \({signum.name}\)"):
        await asyncio.wait_for(task, 30)

    reply = await collect(provider, ask("Say hello.", max_tokens=4))
    assert isinstance(reply[-1], Completion)
    assert provider.restarts == 1
    assert provider.worker_pid not in (None, pid)


async def test_a_worker_stuck_in_native_code_is_killed_and_replaced(provider: LocalProvider) -> None:
    """SIGSTOP freezes the worker the way an endless native loop would: no token, no error, no exit."""
    some_pieces = asyncio.Event()
    task = asyncio.create_task(_pieces_then(provider, some_pieces))
    await asyncio.wait_for(some_pieces.wait(), 30)
    pid = provider.worker_pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)

    with pytest.raises(ModelFailed, match=r"crashed \(SIGKILL\)"):
        await asyncio.wait_for(task, 30)  # stall_seconds is 3 here
    assert isinstance((await collect(provider, ask("Hi", 2)))[-1], Completion)


async def test_unknown_model_is_model_not_found(provider: LocalProvider) -> None:
    with pytest.raises(ModelNotFound) as caught:
        await collect(provider, Prompt("llama3.2", (ChatTurn(Role.USER, "Hi"),), 8))

    assert caught.value.model == "llama3.2"


async def test_lists_the_bundled_model(provider: LocalProvider) -> None:
    (model,) = await provider.list_models()

    assert (model.name, model.provider, model.family) == (MODEL, "local", "smollm2")
    assert (model.parameter_size, model.quantization_level) == ("135M", "Q4_1")
    assert model.size_bytes > 90_000_000


async def test_the_gemma_base_model_continues_a_transcript() -> None:
    gemma = LocalProvider("gemma3-270m", context_tokens=2048)
    try:
        *pieces, completion = await collect(gemma, ask("What is the capital of France?", model="gemma3-270m"))
    finally:
        await gemma.aclose()

    assert "".join(str(p) for p in pieces).strip()
    assert isinstance(completion, Completion)


def test_the_installed_llama_cpp_is_the_portable_build() -> None:
    """Built by deploy/llama-wheel.sh with a fixed baseline, not llama.cpp's default `GGML_NATIVE=ON`: on this
    machine a native build would report the host's AVX-512 (or AMX) kernels compiled in."""
    info = subprocess.run(
        [sys.executable, "-c", "import llama_cpp; print(llama_cpp.llama_print_system_info().decode())"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "CPU :" in info
    for feature in ("AVX512 = 1", "AMX_INT8 = 1", "AVX512_VNNI = 1", "AVX512_BF16 = 1"):
        assert feature not in info, f"{feature} in {info!r}"
    if os.uname().machine == "x86_64":
        assert "AVX2 = 1" in info


def test_cpu_features_the_build_needs_are_checked_before_loading() -> None:
    flags = "flags\t\t: fpu sse sse2 avx avx2 fma f16c bmi2 avx512f"
    assert missing_cpu_features(flags, "x86_64") == []
    assert missing_cpu_features("flags\t\t: fpu sse sse2 avx", "x86_64") == ["avx2", "fma", "f16c", "bmi2"]
    assert missing_cpu_features("Features: fp asimd", "aarch64") == []
    assert set(X86_64_FLAGS) >= {"avx2", "fma"}


def test_every_bundled_model_is_pinned_by_checksum() -> None:
    assert {m.name for m in BUNDLED.values()} == {"smollm2-135m", "gemma3-270m"}
    assert all(len(m.sha256) == 64 for m in BUNDLED.values())
