"""A real replica (fake model, SQLite) for the client and CLI tests, reachable directly and through a proxy."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from chat_client import RetryPolicy
from tests.clients.proxy import BreakingProxy
from tests.integration.harness import Replica, running_replica, settings_for

COACH = "/chat.v1.ChatService/Coach"

# Short waits between attempts, so tests spend their time on behaviour, not on backoff.
FAST_RETRY = RetryPolicy(attempts=8, initial_backoff=0.01, max_backoff=0.2)


@pytest.fixture
def sqlite_url(tmp_path: Path, sqlite_template: Path) -> str:
    path = tmp_path / "chat.db"
    shutil.copy(sqlite_template, path)
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture
async def server(sqlite_url: str) -> AsyncIterator[Replica]:
    async with running_replica(settings_for(sqlite_url)) as running:
        yield running


@pytest.fixture
async def slow_server(sqlite_url: str) -> AsyncIterator[Replica]:
    """Replies of 64 tokens at 40 tokens/s (~1.6 s): time to break a stream or press Ctrl-C mid-reply."""
    settings = settings_for(sqlite_url, fake_tokens_per_second=40, fake_reply_tokens=64)
    async with running_replica(settings) as running:
        yield running


@dataclass
class ThreadedServer:
    address: str
    keys: dict[str, str]


@pytest.fixture
def brisk_server(sqlite_url: str) -> Iterator[ThreadedServer]:
    """Replies of 64 tokens at 400 tokens/s (still generating while they stream, but quick), served from an
    event loop of its own on a thread: for hypothesis tests, whose examples each run on a fresh loop."""
    settings = settings_for(sqlite_url, fake_tokens_per_second=400, fake_reply_tokens=64)
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    started: list[ThreadedServer] = []
    ready = threading.Event()

    async def serve() -> None:
        async with running_replica(settings) as replica:
            started.append(ThreadedServer(replica.address, {"alice": await replica.key("alice")}))
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    try:
        assert ready.wait(30), "the server thread did not start"
        yield started[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        loop.close()


@contextlib.asynccontextmanager
async def proxy_to(target: str, *, latency: float = 0.0) -> AsyncIterator[tuple[BreakingProxy, str]]:
    host, _, port = target.rpartition(":")
    breaking = BreakingProxy(host, int(port), latency=latency)
    address = await breaking.start()
    try:
        yield breaking, address
    finally:
        await breaking.close()


@pytest.fixture
async def proxy(slow_server: Replica) -> AsyncIterator[tuple[BreakingProxy, str]]:
    async with proxy_to(slow_server.address) as running:
        yield running


class FinishedRpcs(logging.Handler):
    """Sees the server's access log: `wait(method)` returns once the server has finished an RPC of `method`."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.finished: list[str] = []
        self.changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.finished.append(getattr(record, "method", ""))
        self.changed.set()

    async def wait(self, method: str, limit: float = 20) -> None:
        async with asyncio.timeout(limit):
            while method not in self.finished:
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
def finished_rpcs() -> Iterator[FinishedRpcs]:
    access = logging.getLogger("service.access")
    handler, level = FinishedRpcs(), access.level
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        access.removeHandler(handler)
        access.setLevel(level)
