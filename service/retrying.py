"""The one way this service retries: tenacity, on the errors named only, with exponential backoff and jitter
(half the first wait), re-raising the last error when the attempts run out. `retried` is the same for one
awaitable call, with a first attempt that costs nothing extra (for the calls every reply makes)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_never,
    wait_exponential_jitter,
)

T = TypeVar("T")


def retrying(
    errors: type[BaseException] | tuple[type[BaseException], ...],
    *,
    attempts: int | None = None,
    initial: float = 0.0,
    ceiling: float = 0.0,
    before_sleep: Callable[[RetryCallState], Awaitable[None] | None] | None = None,
) -> AsyncRetrying:
    """Use as `async for attempt in retrying(...): with attempt: ...`. Without `attempts` it retries until it
    works; with `initial` 0 it tries again at once (`before_sleep` may wait for something else instead)."""
    return AsyncRetrying(
        retry=retry_if_exception_type(errors),
        stop=stop_after_attempt(attempts) if attempts is not None else stop_never,
        wait=wait_exponential_jitter(multiplier=initial, max=ceiling, jitter=initial / 2),
        before_sleep=before_sleep,
        reraise=True,
    )


async def retried(
    call: Callable[[], Awaitable[T]],
    errors: type[BaseException] | tuple[type[BaseException], ...],
    *,
    attempts: int | None = None,
    initial: float = 0.0,
    ceiling: float = 0.0,
    before_sleep: Callable[[RetryCallState], Awaitable[None] | None] | None = None,
) -> T:
    """`await call()`, retried exactly as `retrying` would. The first attempt runs outside tenacity, whose
    machinery costs ~40 µs an attempt (a reply's start and end pay it otherwise); at its first failure tenacity
    takes over, its own first attempt being that failure (so the waits, the logging and the count of attempts
    are tenacity's)."""
    try:
        return await call()
    except errors as error:
        failed: BaseException | None = error
    async for attempt in retrying(
        errors, attempts=attempts, initial=initial, ceiling=ceiling, before_sleep=before_sleep
    ):
        with attempt:
            if failed is not None:
                first, failed = failed, None
                raise first
            return await call()
    raise AssertionError("unreachable: tenacity re-raises the last error")
