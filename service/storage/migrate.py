"""Schema migrations (Alembic), applied by `chat-service migrate` and on start-up for SQLite; and the checks
that a database is there, reachable and migrated before anything serves from it.

Every way a database can be unusable at start-up becomes one `CannotStart` naming the database (never its
password) and what to do; the CLI reports it as one log line."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import exc
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlalchemy.pool import NullPool

from service.startup import CannotStart

_SCRIPTS = Path(__file__).with_name("migrations")
CONNECT_TIMEOUT = 10.0  # seconds; a host that drops packets would otherwise hold start-up for a minute
MAINTENANCE_DATABASES = ("postgres", "template1")  # where CREATE DATABASE can be said from
# SQLSTATEs (Postgres error codes) that need their own words.
MISSING_DATABASE, DUPLICATE_DATABASE, NOT_ALLOWED = "3D000", "42P04", "42501"
REFUSED_LOGIN = ("28000", "28P01")
CANNOT_CONNECT_NOW = "57P03"
# What a failed connection raises: the driver's errors (wrapped or not) and the socket's.
CONNECT_ERRORS = (exc.DBAPIError, exc.InterfaceError, OSError, TimeoutError)

T = TypeVar("T")


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_SCRIPTS))
    # ConfigParser interpolation: a literal % in a password must be doubled.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Apply migrations up to `revision`. Blocking: call it from a thread inside an event loop."""
    _check_sqlite_directory(database_url)
    try:
        command.upgrade(alembic_config(database_url), revision)
    except CONNECT_ERRORS as error:
        raise not_ready(database_url, error) from error


def current_head() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def describe(database_url: str) -> str:
    """The database as an operator names it (`database 'chat' on host:port`), never with its password."""
    url = sa.make_url(database_url)
    if url.get_backend_name() == "sqlite":
        return f"SQLite database {url.database or ':memory:'}"
    return f"database {url.database!r} on {url.host or 'localhost'}:{url.port or 5432}"


async def ensure_database(database_url: str) -> bool:
    """Create the Postgres database the URL names when the server does not have it yet (the quick start's
    first `migrate`). True when it was created here; SQLite creates its file by itself."""
    url = sa.make_url(database_url)
    if url.get_backend_name() != "postgresql":
        return False
    try:
        await _probe(url, _nothing)
        return False
    except CONNECT_ERRORS as error:
        if sqlstate(error) != MISSING_DATABASE:
            raise not_ready(database_url, error) from error
    return await _create(url)


async def check(database_url: str) -> None:
    """Raise `CannotStart` unless the database is reachable and at a schema this code can serve from."""
    _check_sqlite_directory(database_url)
    try:
        revision = await _probe(sa.make_url(database_url), _revision)
    except CONNECT_ERRORS as error:
        raise not_ready(database_url, error) from error
    scripts = ScriptDirectory.from_config(alembic_config(database_url))
    head = scripts.get_current_head()
    migrate_it = "run `chat-service migrate` with the same CHAT_DATABASE_URL (or --database-url)"
    if revision is None:
        raise CannotStart(f"the {describe(database_url)} has no schema", migrate_it)
    if revision != head and _known(scripts, revision):
        # A revision we do not know is a newer release's: migrations stay compatible with the release before.
        raise CannotStart(
            f"the {describe(database_url)} is at schema revision {revision}; this version needs {head}",
            migrate_it,
        )


def not_ready(database_url: str, error: BaseException) -> CannotStart:
    """The operator's view of a failed connection (or migration) to `database_url`."""
    where, user = describe(database_url), sa.make_url(database_url).username or "(default user)"
    state = sqlstate(error)
    if state == MISSING_DATABASE:
        return CannotStart(
            f"the {where} does not exist",
            "run `chat-service migrate` with the same CHAT_DATABASE_URL (or --database-url): it creates the "
            "database, then the schema",
        )
    if state in REFUSED_LOGIN:
        return CannotStart(
            f"the {where} refused user {user!r}: {_innermost(error)}",
            "check the user name and password in CHAT_DATABASE_URL",
        )
    if not _unreachable(error, state):
        return CannotStart(
            f"the {where} failed a statement: {_innermost(error)}",
            f"check user {user!r}'s privileges there, and the database server's log",
        )
    if sa.make_url(database_url).get_backend_name() == "sqlite":
        return CannotStart(
            f"cannot open the {where}: {_innermost(error)}",
            "check that its directory exists and is writable, or set CHAT_DATABASE_URL (--database-url)",
        )
    return CannotStart(
        f"cannot reach the {where}: {_innermost(error)}",
        "check that Postgres is running there and that CHAT_DATABASE_URL (--database-url) names its host and port",
    )


def _check_sqlite_directory(database_url: str) -> None:
    """A SQLite file in a directory that does not exist cannot be created: said before aiosqlite tries, since
    its failed connect leaves a worker thread that may outlive the event loop and print a traceback."""
    url = sa.make_url(database_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:") or url.database.startswith("file:"):
        return
    directory = Path(url.database).parent
    if not directory.is_dir():
        raise CannotStart(
            f"cannot open the {describe(database_url)}: its directory {directory} does not exist",
            "create the directory, or set CHAT_DATABASE_URL (--database-url)",
        )


def _unreachable(error: BaseException, state: str | None) -> bool:
    """A failure to connect at all, as opposed to a statement the database refused."""
    if state is not None:
        return state.startswith("08") or state == CANNOT_CONNECT_NOW  # connection_exception, or starting up
    root = error
    while root.__cause__ is not None:
        root = root.__cause__
    # SQLite reports a file it cannot open, or create, as one more OperationalError.
    return isinstance(root, OSError | TimeoutError | exc.InterfaceError) or "unable to open" in str(root)


def sqlstate(error: BaseException) -> str | None:
    """The Postgres error code anywhere in the exception's chain (drivers wrap each other's errors)."""
    seen: BaseException | None = error
    for _ in range(8):
        if seen is None:
            return None
        state = getattr(seen, "sqlstate", None)
        if isinstance(state, str):
            return state
        seen = seen.__cause__ or getattr(seen, "orig", None)
    return None


def _innermost(error: BaseException) -> str:
    """The root cause in one line, as the driver or the operating system put it."""
    while error.__cause__ is not None:
        error = error.__cause__
    if isinstance(error, TimeoutError):
        return f"no answer within {CONNECT_TIMEOUT:g} s"
    text = str(getattr(error, "orig", None) or error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


async def _probe(url: sa.URL, read: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT), engine.connect() as conn:
            return await read(conn)
    finally:
        await engine.dispose()


async def _create(url: sa.URL) -> bool:
    """CREATE DATABASE from the first maintenance database the server has."""
    last: BaseException | None = None
    for maintenance in MAINTENANCE_DATABASES:
        engine = create_async_engine(url.set(database=maintenance), poolclass=NullPool, isolation_level="AUTOCOMMIT")
        name = engine.dialect.identifier_preparer.quote(url.database or "")
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT), engine.connect() as conn:
                await conn.execute(sa.text(f"CREATE DATABASE {name}"))
            return True
        except CONNECT_ERRORS as error:
            state = sqlstate(error)
            if state == DUPLICATE_DATABASE:  # another `migrate` got there first
                return False
            if state == NOT_ALLOWED:
                raise _not_allowed(url) from error
            if state != MISSING_DATABASE:
                raise not_ready(url.render_as_string(), error) from error
            last = error
        finally:
            await engine.dispose()
    raise not_ready(url.render_as_string(), last or RuntimeError("no maintenance database"))


def _not_allowed(url: sa.URL) -> CannotStart:
    return CannotStart(
        f"the {describe(url.render_as_string())} does not exist and user {url.username!r} may not create it",
        f"create it as a superuser (CREATE DATABASE {url.database} OWNER {url.username}) or grant the user CREATEDB",
    )


async def _nothing(conn: AsyncConnection) -> None:
    await conn.execute(sa.text("SELECT 1"))


async def _revision(conn: AsyncConnection) -> str | None:
    return await conn.run_sync(lambda sync: MigrationContext.configure(sync).get_current_revision())


def _known(scripts: ScriptDirectory, revision: str) -> bool:
    try:
        return scripts.get_revision(revision) is not None
    except CommandError:
        return False
