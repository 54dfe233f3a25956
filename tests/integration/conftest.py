from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.integration.harness import Replica, running_replica, settings_for


@pytest.fixture
async def replica(database_url: str) -> AsyncIterator[Replica]:
    async with running_replica(settings_for(database_url)) as running:
        yield running


@pytest.fixture
async def slow_replica(database_url: str) -> AsyncIterator[Replica]:
    """Replies take ~1 s (64 tokens at 60 tokens/s): time to disconnect, resume and cancel mid-reply."""
    settings = settings_for(database_url, fake_tokens_per_second=60, fake_reply_tokens=64)
    async with running_replica(settings) as running:
        yield running
