"""When to try a failed call again, and how long to wait first."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import grpc
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_random_exponential

from chat_client.errors import ChatError, ModelUnavailable

# Only UNAVAILABLE means "the request did not get through / the server went away": retrying anything else
# would repeat a refusal (or, for a non-idempotent call, maybe the work).
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})


# How a stream's end looks when a proxy between client and server (nginx, Envoy, HAProxy) lost the server: it
# resets the stream (INTERNAL) or closes it without a status (UNKNOWN). chat-service's own statuses always
# carry an ErrorInfo, so one without is a transport break.
PROXY_BREAKS = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})


def resumable(error: ChatError) -> bool:
    """Whether a broken reply stream may be resumed (a read: resuming repeats nothing): a retryable error, or
    a break a proxy reported rather than the server."""
    return retryable(error) or (error.code in PROXY_BREAKS and not error.reason)


def retryable(error: ChatError) -> bool:
    """Whether a failed call may be tried again: UNAVAILABLE, unless chat-service answered that its model
    provider is down. The call got through then; repeating it at once only delays that answer."""
    return error.code in RETRYABLE and not isinstance(error, ModelUnavailable)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter. `attempts` counts every try, the first included; a reply stream
    counts its consecutive failures without progress, so a long reply survives any number of spaced breaks."""

    attempts: int = 6
    initial_backoff: float = 0.1
    max_backoff: float = 3.0
    multiplier: float = 2.0

    def _wait(self) -> wait_random_exponential:
        return wait_random_exponential(multiplier=self.initial_backoff, max=self.max_backoff, exp_base=self.multiplier)

    def retrying(self, should_retry: Callable[[BaseException], bool]) -> AsyncRetrying:
        """Tenacity's loop for one call: up to `attempts` tries of what `should_retry` accepts, full-jitter
        exponential backoff in between; the last error is raised as is."""
        return AsyncRetrying(
            stop=stop_after_attempt(self.attempts),
            wait=self._wait(),
            retry=retry_if_exception(should_retry),
            reraise=True,
        )

    def delay(self, failures: int) -> float:
        """Seconds to wait after the `failures`-th consecutive failure (1-based), as `retrying` waits."""
        state = RetryCallState(self.retrying(lambda _: False), None, (), {})
        state.attempt_number = failures
        return float(self._wait()(state))

    def gives_up(self, failures: int) -> bool:
        return failures >= self.attempts


NO_RETRY = RetryPolicy(attempts=1)
