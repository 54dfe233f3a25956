"""The one way this service retries: tenacity, on the errors named only, with exponential backoff and jitter
(half the first wait), re-raising the last error when the attempts run out."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_never,
    wait_exponential_jitter,
)


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
