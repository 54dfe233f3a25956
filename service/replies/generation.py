"""One reply being generated: a task owned by the server, not by the RPC that asked for it."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from service.domain import (
    Completion,
    DomainError,
    FinishReason,
    Message,
    MessageStatus,
    ModelFailed,
    ModelUnavailable,
    Prompt,
    Usage,
)
from service.ports import Provider
from service.replies.buffer import Outcome, ReplyBuffer

logger = logging.getLogger(__name__)

STOP_MESSAGES = {
    MessageStatus.CANCELLED: "",
    MessageStatus.INTERRUPTED: "the service stopped while the reply was being generated",
}


@dataclasses.dataclass(slots=True)
class Generation:
    """Mutable state of a reply in flight. `message` is the row as inserted (status STREAMING)."""

    message: Message
    prompt: Prompt
    buffer: ReplyBuffer
    lease_expires_at: datetime
    flushed_length: int = 0
    stop_status: MessageStatus | None = None
    first_token_at: float | None = None  # time.perf_counter() of the first text piece
    producer: asyncio.Task[Completion] | None = None
    task: asyncio.Task[None] | None = None

    @property
    def id(self) -> str:
        return self.message.id

    def stop(self, status: MessageStatus) -> None:
        """Ask the generation to end with `status` (CANCELLED or INTERRUPTED); idempotent."""
        if self.stop_status is None and self.producer is not None and not self.producer.done():
            self.stop_status = status
            self.producer.cancel()

    async def ended(self) -> Outcome:
        assert self.task is not None
        await asyncio.shield(self.task)
        assert self.buffer.outcome is not None
        return self.buffer.outcome


class Producer:
    """Runs the provider for a generation: retries an unreachable provider before the first token, never
    after (text cannot be taken back), and appends every piece to the buffer."""

    def __init__(self, provider: Provider, *, attempts: int) -> None:
        self._provider = provider
        self._attempts = attempts

    async def run(self, generation: Generation) -> Completion:
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(ModelUnavailable),
            stop=stop_after_attempt(self._attempts),
            wait=wait_exponential_jitter(multiplier=0.2, max=2.0, jitter=0.1),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._consume(generation)
        raise AssertionError("unreachable: tenacity re-raises the last error")

    async def _consume(self, generation: Generation) -> Completion:
        buffer = generation.buffer
        completion: Completion | None = None
        try:
            async for item in self._provider.stream(generation.prompt):
                if type(item) is str:
                    if generation.first_token_at is None:
                        generation.first_token_at = time.perf_counter()
                    buffer.append(item)
                else:
                    assert isinstance(item, Completion)
                    completion = item
        except ModelUnavailable as error:
            if buffer.length:  # the provider broke after text flowed: not retryable
                raise ModelFailed("the model provider failed while generating the reply") from error
            raise
        return completion or Completion(FinishReason.STOP, Usage(completion_tokens=len(buffer.text.split())))


def final_message(
    generation: Generation, *, completion: Completion | None, error: DomainError | None, now: datetime
) -> Message:
    """The row to store when a generation ends, from how it ended."""
    if error is not None:
        status, reason, usage, note = MessageStatus.FAILED, FinishReason.NONE, Usage(), error.message
    elif completion is None:
        status = generation.stop_status or MessageStatus.INTERRUPTED
        reason, usage, note = FinishReason.NONE, Usage(), STOP_MESSAGES[status]
    else:
        status, reason, usage, note = MessageStatus.COMPLETED, completion.finish_reason, completion.usage, ""
    return dataclasses.replace(
        generation.message,
        content=generation.buffer.text,
        status=status,
        finish_reason=reason,
        usage=usage,
        error_message=note,
        update_time=now,
    )


async def drive(
    generation: Generation,
    producer: Producer,
    *,
    persist: Callable[[Message], Awaitable[None]],
    clock: Callable[[], datetime],
) -> None:
    """The generation task: produce, then store the final state, then release every reader."""
    generation.producer = asyncio.create_task(producer.run(generation), name=f"produce-{generation.id}")
    completion: Completion | None = None
    error: DomainError | None = None
    try:
        completion = await asyncio.shield(generation.producer)
    except asyncio.CancelledError:
        if not generation.producer.cancelled():
            raise  # the drive task itself was cancelled (hard shutdown): nothing more to do
    except DomainError as exc:
        error = exc
    except Exception:
        logger.exception("generation %s failed unexpectedly", generation.id)
        error = ModelFailed("the reply failed unexpectedly")
    final = final_message(generation, completion=completion, error=error, now=clock())
    await persist(final)
    generation.buffer.close(Outcome(final, error))
