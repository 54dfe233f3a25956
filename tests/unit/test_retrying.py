"""The one retry helper (`service.retrying.retrying`, and `retried` for one call): which errors it retries, how
often, what it re-raises. Both forms are held to the same behaviour."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import pytest
from tenacity import RetryCallState

from service.domain import FailedPrecondition, ModelUnavailable, OutOfRange
from service.retrying import retried, retrying


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


class Retry(Protocol):
    async def __call__(self, body: Callable[[], Awaitable[str]], errors: type[Exception], **options: Any) -> str: ...


async def in_a_loop(body: Callable[[], Awaitable[str]], errors: type[Exception], **options: Any) -> str:
    async for attempt in retrying(errors, **options):
        with attempt:
            return await body()
    raise AssertionError("unreachable: tenacity re-raises the last error")


async def one_call(body: Callable[[], Awaitable[str]], errors: type[Exception], **options: Any) -> str:
    return await retried(body, errors, **options)


@pytest.fixture(params=[in_a_loop, one_call], ids=["retrying", "retried"])
def retry(request: pytest.FixtureRequest) -> Retry:
    return request.param  # type: ignore[no-any-return]


async def test_it_retries_the_named_errors_until_an_attempt_works(retry: Retry) -> None:
    body = Failing(ModelUnavailable("down"), ModelUnavailable("down"))
    assert await retry(body, ModelUnavailable, attempts=3) == "done"
    assert body.calls == 3


async def test_an_attempt_that_works_at_once_is_the_only_call(retry: Retry) -> None:
    body = Failing()
    assert await retry(body, ModelUnavailable, attempts=3) == "done"
    assert body.calls == 1


async def test_after_the_last_attempt_it_re_raises_the_last_error(retry: Retry) -> None:
    body = Failing(ModelUnavailable("down 1"), ModelUnavailable("down 2"), ModelUnavailable("down 3"))
    with pytest.raises(ModelUnavailable, match="down 2"):
        await retry(body, ModelUnavailable, attempts=2)
    assert body.calls == 2


async def test_one_attempt_allowed_is_one_call(retry: Retry) -> None:
    body = Failing(ModelUnavailable("down 1"), ModelUnavailable("down 2"))
    with pytest.raises(ModelUnavailable, match="down 1"):
        await retry(body, ModelUnavailable, attempts=1)
    assert body.calls == 1


async def test_any_other_error_passes_at_once(retry: Retry) -> None:
    body = Failing(FailedPrecondition("busy"))
    with pytest.raises(FailedPrecondition):
        await retry(body, ModelUnavailable, attempts=5)
    assert body.calls == 1


async def test_before_sleep_is_awaited_between_attempts_and_sees_each_failure(retry: Retry) -> None:
    waited: list[tuple[int, str]] = []

    async def wait_for_idle(state: RetryCallState) -> None:
        assert state.outcome is not None
        waited.append((state.attempt_number, str(state.outcome.exception())))

    body = Failing(FailedPrecondition("busy 1"), FailedPrecondition("busy 2"), FailedPrecondition("busy 3"))
    with pytest.raises(FailedPrecondition, match="busy 3"):
        await retry(body, FailedPrecondition, attempts=3, before_sleep=wait_for_idle)
    assert waited == [(1, "busy 1"), (2, "busy 2")]
    assert body.calls == 3


async def test_without_a_limit_it_retries_until_it_works(retry: Retry) -> None:
    body = Failing(*[ModelUnavailable("down")] * 7)
    assert await retry(body, ModelUnavailable) == "done"
    assert body.calls == 8


def test_past_the_end_names_the_offset_and_the_length() -> None:
    error = OutOfRange.past_the_end(12, 10)
    assert error.message == "offset 12 is past the end of the reply (10 characters)"
    assert error.metadata == {"offset": "12", "length": "10"}
