"""A fake model whose tokens are the times they were emitted: the client measures each token's latency exactly.

Every token is `"<unix time, µs>;"` — the fake's content is free to be anything, and this content lets a client
in another process compute "model emitted → client received" per token (same machine, same clock).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence

from service.domain import Completion, FinishReason, ModelInfo, Prompt, Usage

MODEL = "bench-clock"
SEPARATOR = ";"


def stamp() -> str:
    return f"{time.time():.6f}{SEPARATOR}"


def stamps(text: str) -> list[float]:
    """The emission times of the whole tokens in `text`."""
    return [float(piece) for piece in text.split(SEPARATOR) if piece]


class ClockProvider:
    """Implements `ports.Provider`: `reply_tokens` tokens at `tokens_per_second` (0: no delay at all)."""

    name = "fake"
    continues = False
    takes_images = False

    def __init__(self, *, tokens_per_second: float, reply_tokens: int) -> None:
        self._interval = 1.0 / tokens_per_second if tokens_per_second > 0 else 0.0
        self._reply_tokens = reply_tokens

    async def stream(self, prompt: Prompt) -> AsyncIterator[str | Completion]:
        count = min(self._reply_tokens, prompt.max_tokens)
        async for token in paced(count, self._interval):
            yield token
        yield Completion(FinishReason.STOP, Usage(prompt_tokens=1, completion_tokens=count))

    async def list_models(self) -> Sequence[ModelInfo]:
        return [ModelInfo(name=MODEL, provider=self.name, family="fake", parameter_size="0")]

    async def aclose(self) -> None:
        return None


async def paced(count: int, interval: float) -> AsyncIterator[str]:
    """`count` time stamps on an absolute schedule (a late tick catches up instead of drifting)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(count):
        if interval:
            delay = start + (i + 1) * interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        yield stamp()
