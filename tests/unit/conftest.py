"""Fixtures the unit tests share: the in-memory storage, a clock that stands still, and the use cases wired as
the app wires them (tests/wired.py), their replies closed after the test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from service.ports import Provider
from service.wiring import UseCases
from tests.fakes import FakeClock, FakeStorage
from tests.wired import Wire, wire


@pytest.fixture
def storage() -> FakeStorage:
    return FakeStorage()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def wired(storage: FakeStorage, clock: FakeClock) -> AsyncIterator[Wire]:
    """Builds the use cases over this test's storage and clock (`tests.wired.wire` takes the options)."""
    built: list[UseCases] = []

    def make(provider: Provider, **options: Any) -> UseCases:
        built.append(wire(storage, clock, provider, **options))
        return built[-1]

    yield make
    for use_cases in built:
        await use_cases.replies.close(0)
