"""Notifications between replicas: Postgres LISTEN/NOTIFY, or an in-process bus where there is no Postgres."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import asyncpg
import sqlalchemy as sa
from tenacity import RetryCallState

from service.retrying import retrying

logger = logging.getLogger(__name__)

MAX_PAYLOAD = 7000  # Postgres refuses payloads of 8,000 bytes or more
_BATCH = 500
_FIRST_CONNECT_WAIT = 5.0


class _Subscribers:
    def __init__(self) -> None:
        self._callbacks: dict[str, list[Callable[[str], None]]] = defaultdict(list)

    def subscribe(self, channel: str, callback: Callable[[str], None]) -> None:
        self._callbacks[channel].append(callback)

    @property
    def channels(self) -> list[str]:
        return list(self._callbacks)

    def deliver(self, channel: str, payload: str) -> None:
        for callback in self._callbacks.get(channel, ()):
            try:
                callback(payload)
            except Exception:
                logger.exception("notification handler for %s failed", channel)


class LocalNotifications(_Subscribers):
    """Implements `ports.Notifications` within one process. It reaches no other replica (`connected` is
    False), so followers of replies generated elsewhere keep polling at the flush interval."""

    connected = False

    def publish(self, channel: str, payload: str) -> None:
        asyncio.get_running_loop().call_soon(self.deliver, channel, payload)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


def _log_connect_failure(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome is not None else None
    delay = state.next_action.sleep if state.next_action is not None else 0.0
    logger.warning("notifications: cannot connect (%s); retrying in %.1fs", type(error).__name__, delay)


class PostgresNotifications(_Subscribers):
    """Implements `ports.Notifications` over one dedicated asyncpg connection: LISTEN on every subscribed
    channel, NOTIFY in batches (one round trip for everything published since the last). Reconnects with
    backoff when Postgres restarts; while disconnected, `connected` is False and publishing drops."""

    def __init__(self, database_url: str, *, max_backoff: float = 5.0) -> None:
        super().__init__()
        url = sa.make_url(database_url).set(drivername="postgresql")
        self._dsn = url.render_as_string(hide_password=False)
        self._max_backoff = max_backoff
        self._outbox: asyncio.Queue[tuple[str, str]] = asyncio.Queue(maxsize=10_000)
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self.connected = False

    def publish(self, channel: str, payload: str) -> None:
        if len(payload.encode()) > MAX_PAYLOAD:
            raise ValueError(f"notification payload over {MAX_PAYLOAD} bytes")
        if self.connected:
            with contextlib.suppress(asyncio.QueueFull):
                self._outbox.put_nowait((channel, payload))

    async def start(self) -> None:
        """Connect in the background; waits a little for the first connection, never fails."""
        self._task = asyncio.create_task(self._run(), name="notifications")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), _FIRST_CONNECT_WAIT)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _connect(self) -> Any:
        """A listening connection, retried with exponential backoff (and jitter) until Postgres answers."""
        errors = (OSError, asyncpg.PostgresError, TimeoutError)
        async for attempt in retrying(
            errors, initial=0.1, ceiling=self._max_backoff, before_sleep=_log_connect_failure
        ):
            with attempt:
                return await asyncpg.connect(self._dsn, timeout=5)
        raise AssertionError("unreachable: tenacity retries until it connects")

    async def _run(self) -> None:
        while True:
            connection = await self._connect()
            try:
                await self._serve(connection)
                logger.warning("notifications: connection lost")
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                logger.warning("notifications: connection lost (%s)", type(error).__name__)
            except Exception:
                # Never let the listener die: a bug here would silently cost every follower its wake-ups.
                logger.exception("notifications: unexpected error")
            finally:
                self.connected = False
                with contextlib.suppress(Exception):
                    await asyncio.shield(connection.close(timeout=1))

    async def _serve(self, connection: Any) -> None:
        lost = asyncio.Event()
        connection.add_termination_listener(lambda _conn: lost.set())
        for channel in self.channels:
            await connection.add_listener(channel, self._on_notification)
        self.connected = True
        self._ready.set()
        logger.info("notifications: listening on %s", ", ".join(self.channels) or "nothing")
        while not lost.is_set():
            batch = await self._next_batch(lost)
            if batch:
                channels, payloads = zip(*batch, strict=True)
                await connection.execute(
                    "SELECT pg_notify(c, p) FROM unnest($1::text[], $2::text[]) AS t(c, p)",
                    list(channels),
                    list(payloads),
                )

    async def _next_batch(self, lost: asyncio.Event) -> list[tuple[str, str]]:
        getter = asyncio.ensure_future(self._outbox.get())
        closed = asyncio.ensure_future(lost.wait())
        try:
            await asyncio.wait({getter, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
            if not getter.done():
                getter.cancel()
        if not getter.done() or getter.cancelled():
            return []
        batch = [getter.result()]
        while len(batch) < _BATCH and not self._outbox.empty():
            batch.append(self._outbox.get_nowait())
        return batch

    def _on_notification(self, _connection: Any, _pid: int, channel: str, payload: str) -> None:
        self.deliver(channel, payload)


def notifications_for(database_url: str) -> LocalNotifications | PostgresNotifications:
    """LISTEN/NOTIFY on Postgres; an in-process bus otherwise."""
    if sa.make_url(database_url).get_backend_name() == "postgresql":
        return PostgresNotifications(database_url)
    return LocalNotifications()
