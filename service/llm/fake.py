"""A deterministic provider for tests and benchmarks: scripted text at a configurable pace."""

from __future__ import annotations

import asyncio
import itertools
import zlib
from collections.abc import AsyncIterator, Sequence

from service.domain import (
    Completion,
    FinishReason,
    ModelInfo,
    ModelNotFound,
    Prompt,
    Role,
    Usage,
    estimate_tokens,
)

# Mixed scripts on purpose: offsets are counted in code points, and tests must see that hold.
_WORDS = (
    "hello",
    "there,",
    "this",
    "is",
    "a",
    "scripted",
    "reply",
    "from",
    "the",
    "fake",
    "model;",
    "café",
    "naïve",
    "Ünïcödé",
    "text",
    "🙂",
    "keeps",
    "offsets",
    "honest.",
    "日本語",
    "and",
    "more",
    "words",
    "follow",
    "until",
    "the",
    "budget",
    "ends.",
)
MODEL_NAME = "fake-echo"


def scripted_tokens(seed_text: str, count: int) -> list[str]:
    """The reply the fake gives to `seed_text`: `count` tokens, the same every time."""
    start = zlib.crc32(seed_text.encode()) % len(_WORDS)
    words = itertools.islice(itertools.cycle(_WORDS), start, start + count)
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


class FakeProvider:
    """Implements `ports.Provider`. Text depends only on the last user turn; `tokens_per_second=0` means
    no delay (the whole reply is produced without yielding to the event loop)."""

    name = "fake"
    continues = True
    takes_images = True  # and ignores them: the text depends on the last user turn's text only

    def __init__(self, *, tokens_per_second: float = 0.0, reply_tokens: int = 64) -> None:
        self._interval = 1.0 / tokens_per_second if tokens_per_second > 0 else 0.0
        self._reply_tokens = reply_tokens

    async def stream(self, prompt: Prompt) -> AsyncIterator[str | Completion]:
        if prompt.model != MODEL_NAME:
            raise ModelNotFound(prompt.model)
        last_user = next((t.content for t in reversed(prompt.turns) if t.role is Role.USER), "")
        tokens = scripted_tokens(last_user, min(self._reply_tokens, prompt.max_tokens))
        if prompt.prefix:  # continuing: the same script, from where the prefix ends
            tokens = _after(tokens, len(prompt.prefix))
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i, token in enumerate(tokens):
            if self._interval:
                # An absolute schedule: a late tick catches up instead of drifting.
                delay = start + (i + 1) * self._interval - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            yield token
        finish = FinishReason.LENGTH if self._reply_tokens > prompt.max_tokens else FinishReason.STOP
        prompt_tokens = sum(estimate_tokens(t.content) for t in prompt.turns)
        yield Completion(finish, Usage(prompt_tokens=prompt_tokens, completion_tokens=len(tokens)))

    async def list_models(self) -> Sequence[ModelInfo]:
        return [ModelInfo(name=MODEL_NAME, provider=self.name, family="fake", parameter_size="0")]

    async def aclose(self) -> None:
        return None


def _after(tokens: list[str], written: int) -> list[str]:
    """The rest of a script once `written` characters of it exist (a token cut by the prefix is finished)."""
    seen = 0
    for index, token in enumerate(tokens):
        if seen + len(token) > written:
            return [token[written - seen :], *tokens[index + 1 :]]
        seen += len(token)
    return []
