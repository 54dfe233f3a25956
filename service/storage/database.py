"""The engine, the unit of work, and the translation of driver errors into domain errors."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, Self

import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from service.domain import NotFound, Unavailable
from service.storage.attachments import SqlAttachments
from service.storage.coaching_sessions import SqlCoachingSessions
from service.storage.integrity import is_foreign_key_violation
from service.storage.repository import SqlApiKeys, SqlConversations, SqlMessages
from service.storage.shares import SqlShares

logger = logging.getLogger(__name__)

# Errors that mean "the database cannot be reached or is restarting", as opposed to a bug in a query.
_UNREACHABLE: tuple[type[BaseException], ...] = (
    exc.OperationalError,
    exc.InterfaceError,
    exc.TimeoutError,
    OSError,
    ConnectionError,
)


def _is_unreachable(error: BaseException) -> bool:
    if isinstance(error, exc.DBAPIError) and error.connection_invalidated:
        return True
    return isinstance(error, _UNREACHABLE)


class Database:
    """Owns the engine. On SQLite, transactions are serialised by one lock (SQLite has a single writer)."""

    def __init__(self, url: str, *, pool_size: int = 10, pool_timeout: float = 30.0) -> None:
        self.url = sa.make_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        self.engine: AsyncEngine = self._create_engine(pool_size, pool_timeout)
        self._lock = asyncio.Lock() if self.is_sqlite else None

    def _create_engine(self, pool_size: int, pool_timeout: float) -> AsyncEngine:
        if not self.is_sqlite:
            # A fixed pool: `pool_size` is the most connections a replica opens (no overflow churn under load).
            # Requests past it queue in order for a connection, up to `pool_timeout`: a burst of reply starts
            # waits its turn instead of failing UNAVAILABLE while the database is healthy (the caller's deadline
            # bounds the wait too).
            return create_async_engine(self.url, pool_size=pool_size, max_overflow=0, pool_timeout=pool_timeout)
        in_memory = self.url.database in (None, "", ":memory:")
        options: dict[str, Any] = {"poolclass": StaticPool} if in_memory else {"pool_size": 1, "max_overflow": 0}
        engine = create_async_engine(self.url, **options)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine

    def unit_of_work(self, *, autocommit: bool = False) -> SqlUnitOfWork:
        return SqlUnitOfWork(self, autocommit=autocommit)

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection]:
        """A connection in a transaction, errors translated; the building block of the unit of work."""
        async with self._lock if self._lock else contextlib.nullcontext():
            try:
                async with self.engine.connect() as conn:
                    yield conn
            except exc.IntegrityError as error:
                if not is_foreign_key_violation(error):
                    raise
                # A row written refers to one a concurrent request deleted since it was read (a conversation): what
                # the caller asked to add to is gone, as if it had been deleted a moment earlier.
                raise NotFound("not found: it was deleted meanwhile") from error
            except _UNREACHABLE as error:
                if not _is_unreachable(error):
                    raise
                logger.warning("database unavailable: %s", type(error).__name__)
                raise Unavailable("the database is unavailable; retry shortly") from error

    async def dispose(self) -> None:
        await self.engine.dispose()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON", "busy_timeout=5000"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


class SqlUnitOfWork:
    """Implements `ports.UnitOfWork`: one connection, one transaction (or, with `autocommit`, the driver's
    autocommit: no BEGIN and no COMMIT sent, each statement its own transaction)."""

    conversations: SqlConversations
    messages: SqlMessages
    api_keys: SqlApiKeys
    coaching_sessions: SqlCoachingSessions
    attachments: SqlAttachments
    shares: SqlShares

    def __init__(self, db: Database, *, autocommit: bool = False) -> None:
        self._db = db
        self._autocommit = autocommit
        self._scope: contextlib.AbstractAsyncContextManager[AsyncConnection] | None = None
        self._conn: AsyncConnection | None = None

    async def __aenter__(self) -> Self:
        self._scope = self._db.connection()
        self._conn = await self._scope.__aenter__()
        try:
            if self._autocommit:  # the pool restores the default isolation when the connection is returned
                await self._conn.execution_options(isolation_level="AUTOCOMMIT")
            else:
                await self._conn.begin()
        except BaseException as error:
            await self._scope.__aexit__(type(error), error, error.__traceback__)
            raise
        self.conversations = SqlConversations(self._conn)
        self.messages = SqlMessages(self._conn)
        self.api_keys = SqlApiKeys(self._conn)
        self.coaching_sessions = SqlCoachingSessions(self._conn)
        self.attachments = SqlAttachments(self._conn)
        self.shares = SqlShares(self._conn)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._scope is not None
        assert self._conn is not None
        try:
            if self._conn.in_transaction():
                await self._conn.rollback()
        except _UNREACHABLE:
            pass  # the connection is gone; the original error (if any) is what matters
        finally:
            # Translates driver errors raised inside the `async with` block, too.
            await self._scope.__aexit__(exc_type, error, tb)

    async def commit(self) -> None:
        assert self._conn is not None
        await self._conn.commit()
