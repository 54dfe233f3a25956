"""The one retry helper (`service.retrying.retrying`): which errors it retries, how often, what it re-raises."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from tenacity import AsyncRetrying, RetryCallState

from service.domain import FailedPrecondition, ModelUnavailable, OutOfRange
from service.retrying import retrying


class Failing:
    """Fails with `errors` in turn, then works; counts its calls."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


async def run(retry: AsyncRetrying, body: Callable[[], Awaitable[str]]) -> str:
    async for attempt in retry:
        with attempt:
            return await body()
    raise AssertionError("unreachable: tenacity re-raises the last error")


async def test_it_retries_the_named_errors_until_an_attempt_works() -> None:
    body = Failing(ModelUnavailable("down"), ModelUnavailable("down"))
    assert await run(retrying(ModelUnavailable, attempts=3), body) == "done"
    assert body.calls == 3


async def test_after_the_last_attempt_it_re_raises_the_last_error() -> None:
    body = Failing(ModelUnavailable("down 1"), ModelUnavailable("down 2"), ModelUnavailable("down 3"))
    with pytest.raises(ModelUnavailable, match="down 2"):
        await run(retrying(ModelUnavailable, attempts=2), body)
    assert body.calls == 2


async def test_any_other_error_passes_at_once() -> None:
    body = Failing(FailedPrecondition("busy"))
    with pytest.raises(FailedPrecondition):
        await run(retrying(ModelUnavailable, attempts=5), body)
    assert body.calls == 1


async def test_before_sleep_is_awaited_between_attempts() -> None:
    waited: list[int] = []

    async def wait_for_idle(state: RetryCallState) -> None:
        waited.append(state.attempt_number)

    body = Failing(*[FailedPrecondition("busy")] * 3)
    with pytest.raises(FailedPrecondition):
        await run(retrying(FailedPrecondition, attempts=3, before_sleep=wait_for_idle), body)
    assert waited == [1, 2]


def test_past_the_end_names_the_offset_and_the_length() -> None:
    error = OutOfRange.past_the_end(12, 10)
    assert error.message == "offset 12 is past the end of the reply (10 characters)"
    assert error.metadata == {"offset": "12", "length": "10"}
