"""One reply being generated: its state, and the producer that feeds its buffer from the model."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from datetime import datetime

from service.domain import (
    Completion,
    DomainError,
    FinishReason,
    Lease,
    Message,
    MessageStatus,
    ModelFailed,
    ModelUnavailable,
    Prompt,
    Usage,
)
from service.ports import ModelCall, ModelCallObserver, Provider, QuietModelCalls
from service.replies.buffer import Outcome, ReplyBuffer
from service.replies.text import TextCleaner
from service.retrying import retried

logger = logging.getLogger(__name__)

STOP_MESSAGES = {
    MessageStatus.CANCELLED: "",
    MessageStatus.INTERRUPTED: "the service stopped while the reply was being generated",
}
ERROR_MESSAGE_CHARS = 500  # the stored column's size


@dataclasses.dataclass(slots=True, eq=False)
class Generation:
    """Mutable state of a reply in flight. `message` is the row as inserted (status STREAMING); `lease` is the
    claim every write is fenced by."""

    message: Message
    prompt: Prompt
    buffer: ReplyBuffer
    lease: Lease
    flushed_length: int = 0
    stop_status: MessageStatus | None = None
    fenced: bool = False  # another replica ended or took the reply: this one must not write it again
    first_token_at: float | None = None  # time.perf_counter() of the first text piece
    producer: asyncio.Task[Completion] | None = None
    task: asyncio.Task[None] | None = None

    @property
    def id(self) -> str:
        return self.message.id

    def stop(self, status: MessageStatus) -> None:
        """Ask the generation to end with `status` (CANCELLED or INTERRUPTED); idempotent, and effective even
        before the model was called."""
        if self.stop_status is None and self.buffer.outcome is None:
            self.stop_status = status
            if self.producer is not None:
                self.producer.cancel()

    def fence(self) -> None:
        """The lease is lost: stop at once and write nothing more."""
        if not self.fenced and self.buffer.outcome is None:
            self.fenced = True
            if self.producer is not None:
                self.producer.cancel()

    async def ended(self) -> Outcome:
        assert self.task is not None
        await asyncio.shield(self.task)
        assert self.buffer.outcome is not None
        return self.buffer.outcome


class StreamGate:
    """At most `limit` model calls at once (CHAT_LLM_MAX_STREAMS). Replies past it wait in line, visibly: a
    warning when the limit is reached (at most once a minute), and `waiting`/`active` for the metrics."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self.waiting = 0
        self._free = asyncio.Semaphore(limit)
        self._warned_at = float("-inf")

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self._free.locked():
            self.waiting += 1
            self._warn()
            try:
                await self._free.acquire()
            finally:
                self.waiting -= 1
        else:
            await self._free.acquire()
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
            self._free.release()

    def _warn(self) -> None:
        now = time.monotonic()
        if now - self._warned_at >= 60:
            self._warned_at = now
            logger.warning(
                "the model stream limit is reached: replies wait for a free stream",
                extra={"limit": self.limit, "waiting": self.waiting},
            )


class Producer:
    """Runs the provider for a generation: retries an unreachable provider before the first token, never after
    (text cannot be taken back); cleans every piece (see `text.py`) and stops a reply at `max_chars`."""

    def __init__(
        self,
        provider: Provider,
        *,
        attempts: int,
        max_chars: int,
        gate: StreamGate | None = None,
        observer: ModelCallObserver | None = None,
    ) -> None:
        self._provider = provider
        self._attempts = attempts
        self._max_chars = max_chars
        self.gate = gate or StreamGate(1024)
        self._observer = observer or QuietModelCalls()

    @property
    def continues(self) -> bool:
        """Whether the model can continue a partial reply (see `Prompt.prefix`)."""
        return self._provider.continues

    async def run(self, generation: Generation) -> Completion:
        async with self.gate.slot():
            return await retried(
                lambda: self._consume(generation), ModelUnavailable, attempts=self._attempts, initial=0.2, ceiling=2.0
            )

    async def _consume(self, generation: Generation) -> Completion:
        call = self._observer.started(self._provider.name, generation.prompt)
        try:
            completion = await self._stream(generation, call)
        except BaseException as error:
            call.failed(error)
            raise
        else:
            call.completed(completion)
            return completion
        finally:
            call.end()

    async def _stream(self, generation: Generation, call: ModelCall) -> Completion:
        buffer, cleaner, room = generation.buffer, TextCleaner(), self._max_chars
        completion: Completion | None = None
        try:
            async with contextlib.aclosing(self._provider.stream(generation.prompt)) as items:  # type: ignore[type-var]
                async for item in items:
                    if type(item) is not str:
                        assert isinstance(item, Completion)
                        completion = item
                        continue
                    if generation.first_token_at is None:
                        generation.first_token_at = time.perf_counter()
                        call.first_token()
                    text = cleaner.feed(item)
                    if buffer.length + len(text) > room:
                        buffer.append(text[: room - buffer.length])
                        return _cut(buffer.length)
                    if text:
                        buffer.append(text)
        except ModelUnavailable as error:
            if buffer.length:  # the provider broke after text flowed: not retryable
                raise ModelFailed("the model provider failed while generating the reply") from error
            raise
        if tail := cleaner.finish():
            buffer.append(tail[: room - buffer.length])
        if completion is not None:
            return completion
        # The provider sent no usage: the words written stand in for tokens (counted only then).
        return Completion(FinishReason.STOP, Usage(completion_tokens=len(buffer.text.split()), estimated=True))


def _cut(length: int) -> Completion:
    """The end of a reply stopped at the size limit: the model would have written on."""
    logger.warning("a reply reached the size limit (%d characters) and was cut there", length)
    return Completion(FinishReason.LENGTH, Usage(completion_tokens=length // 4, estimated=True))


def final_message(
    generation: Generation, *, completion: Completion | None, error: DomainError | None, now: datetime
) -> Message:
    """The row to store when a generation ends, from how it ended."""
    reason = ""
    if error is not None:
        status, finish, usage, note, reason = (
            MessageStatus.FAILED,
            FinishReason.NONE,
            Usage(),
            error.message,
            error.reason,
        )
    elif completion is None:
        status = generation.stop_status or MessageStatus.INTERRUPTED
        finish, usage, note = FinishReason.NONE, Usage(), STOP_MESSAGES[status]
    else:
        status, finish, usage, note = MessageStatus.COMPLETED, completion.finish_reason, completion.usage, ""
    return dataclasses.replace(
        generation.message,
        content=generation.buffer.text,
        status=status,
        finish_reason=finish,
        usage=usage,
        error_message=note[:ERROR_MESSAGE_CHARS],
        error_reason=reason,
        update_time=now,
    )
