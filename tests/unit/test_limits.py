"""The per-user rate limiter: a token bucket of requests per minute, and concurrent streams."""

from __future__ import annotations

import pytest

from service.domain import ResourceExhausted
from service.ratelimit.replica import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_up_to_the_limit_then_refusal_with_the_time_until_the_next_request() -> None:
    clock = Clock()
    limiter = RateLimiter(per_minute=6, max_streams=0, clock=clock)
    for _ in range(6):
        limiter.check_request("alice")
    with pytest.raises(ResourceExhausted) as error:
        limiter.check_request("alice")
    assert error.value.retry_after == pytest.approx(10.0)  # 6 a minute: one every 10 s
    clock.now += 4
    with pytest.raises(ResourceExhausted) as later:
        limiter.check_request("alice")
    assert later.value.retry_after == pytest.approx(6.0)
    clock.now += 6
    limiter.check_request("alice")


def test_users_have_buckets_of_their_own() -> None:
    limiter = RateLimiter(per_minute=1, max_streams=0, clock=Clock())
    limiter.check_request("alice")
    limiter.check_request("bob")
    with pytest.raises(ResourceExhausted):
        limiter.check_request("alice")


def test_the_bucket_refills_to_its_capacity_only() -> None:
    clock = Clock()
    limiter = RateLimiter(per_minute=2, max_streams=0, clock=clock)
    limiter.check_request("alice")
    clock.now += 3600
    limiter.check_request("alice")
    limiter.check_request("alice")
    with pytest.raises(ResourceExhausted):
        limiter.check_request("alice")


def test_zero_turns_limits_off() -> None:
    limiter = RateLimiter(per_minute=0, max_streams=0, clock=Clock())
    for _ in range(10_000):
        limiter.check_request("alice")
        limiter.open_stream("alice")
    assert limiter.open_streams == 10_000


def test_streams_are_counted_per_user_and_given_back() -> None:
    limiter = RateLimiter(per_minute=0, max_streams=2, clock=Clock())
    limiter.open_stream("alice")
    limiter.open_stream("alice")
    with pytest.raises(ResourceExhausted) as error:
        limiter.open_stream("alice")
    assert error.value.retry_after > 0
    limiter.open_stream("bob")
    limiter.close_stream("alice")
    limiter.open_stream("alice")
    assert limiter.open_streams == 3
