"""Notifications between replicas: Postgres LISTEN/NOTIFY (with reconnects) and the in-process bus."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from service.storage.notifications import LocalNotifications, PostgresNotifications

pytestmark = pytest.mark.postgres


class Inbox:
    def __init__(self) -> None:
        self.items: asyncio.Queue[str] = asyncio.Queue()

    def __call__(self, payload: str) -> None:
        self.items.put_nowait(payload)

    async def next(self) -> str:
        async with asyncio.timeout(5):
            return await self.items.get()


@pytest.fixture
async def pair(postgres_database: str) -> AsyncIterator[tuple[PostgresNotifications, PostgresNotifications, Inbox]]:
    a, b = PostgresNotifications(postgres_database), PostgresNotifications(postgres_database)
    inbox = Inbox()
    b.subscribe("test_channel", inbox)
    await a.start()
    await b.start()
    try:
        yield a, b, inbox
    finally:
        await a.close()
        await b.close()


async def test_a_notification_reaches_another_replica(
    pair: tuple[PostgresNotifications, PostgresNotifications, Inbox],
) -> None:
    a, b, inbox = pair
    assert a.connected and b.connected
    for index in range(20):
        a.publish("test_channel", f"message-{index}")
    assert [await inbox.next() for _ in range(20)] == [f"message-{i}" for i in range(20)]
    a.publish("other_channel", "not for b")
    a.publish("test_channel", "after")
    assert await inbox.next() == "after"


async def test_it_reconnects_after_the_connection_is_killed(
    pair: tuple[PostgresNotifications, PostgresNotifications, Inbox], postgres_database: str
) -> None:
    a, b, inbox = pair
    engine = create_async_engine(postgres_database)
    try:
        async with engine.begin() as conn:
            killed = await conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid() AND query LIKE 'LISTEN%'"
                )
            )
            assert killed.rowcount >= 1
    finally:
        await engine.dispose()
    async with asyncio.timeout(10):
        while True:
            a.publish("test_channel", "again")
            try:
                async with asyncio.timeout(0.5):
                    if await inbox.items.get() == "again":
                        break
            except TimeoutError:
                continue
    assert a.connected and b.connected


async def test_oversized_payloads_are_refused(pair: tuple[PostgresNotifications, PostgresNotifications, Inbox]) -> None:
    a, _, _ = pair
    with pytest.raises(ValueError, match="7000"):
        a.publish("test_channel", "x" * 7001)


async def test_an_unreachable_server_is_not_connected_and_drops_publications() -> None:
    notifications = PostgresNotifications("postgresql+asyncpg://postgres@127.0.0.1:1/none")
    await notifications.start()
    try:
        assert not notifications.connected
        notifications.publish("test_channel", "dropped")  # never blocks, never raises
    finally:
        await notifications.close()


@pytest.mark.parametrize("_", [None], ids=["in-process"])
async def test_the_local_bus_delivers_on_the_event_loop(_: None) -> None:
    bus, inbox = LocalNotifications(), Inbox()
    bus.subscribe("c", inbox)
    bus.publish("c", "hello")
    assert inbox.items.empty()  # delivered on the loop, not re-entrantly
    assert await inbox.next() == "hello"
