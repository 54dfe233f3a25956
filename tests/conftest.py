"""Shared fixtures: real databases (SQLite and Postgres), a real grpc.aio server on a loopback port."""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from service.storage import migrate
from service.storage.tables import metadata

POSTGRES_URL = os.environ.get("CHAT_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")
REQUIRE_POSTGRES = os.environ.get("CHAT_TEST_REQUIRE_POSTGRES", "") not in ("", "0", "false")
REDIS_URL = os.environ.get("CHAT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REQUIRE_REDIS = os.environ.get("CHAT_TEST_REQUIRE_REDIS", "") not in ("", "0", "false")


def _off_loop(function, *args):  # type: ignore[no-untyped-def]
    """Session fixtures may be first requested from inside a test's event loop: run blocking set-up
    (Alembic, asyncio.run) on a thread of its own."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(function, *args).result()


async def _postgres_admin(statement: str) -> None:
    engine = create_async_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(sa.text(statement))
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A fresh, migrated Postgres database for this test session (dropped afterwards)."""
    name = f"chat_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        _off_loop(asyncio.run, _postgres_admin(f'CREATE DATABASE "{name}"'))
    except (OSError, sa.exc.SQLAlchemyError) as error:
        if REQUIRE_POSTGRES:
            pytest.fail(f"Postgres is required (CHAT_TEST_REQUIRE_POSTGRES=1) but unreachable: {error}")
        pytest.skip(f"Postgres not reachable at {POSTGRES_URL} ({type(error).__name__}); set CHAT_TEST_POSTGRES_URL")
    url = sa.make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    _off_loop(migrate.upgrade, url)
    yield url
    _off_loop(asyncio.run, _postgres_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def redis_server() -> str:
    """The shared Redis server's URL (CHAT_TEST_REDIS_URL); tests keep to their own keys (`redis_prefix`)."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    except (redis.RedisError, OSError) as error:
        if REQUIRE_REDIS:
            pytest.fail(f"Redis is required (CHAT_TEST_REQUIRE_REDIS=1) but unreachable: {error}")
        pytest.skip(f"Redis not reachable at {REDIS_URL} ({type(error).__name__}); set CHAT_TEST_REDIS_URL")
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_server: str) -> Iterator[str]:
    """A key prefix of this test's own (CHAT_REDIS_KEY_PREFIX), its keys deleted afterwards."""
    prefix = f"chat-test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = redis.Redis.from_url(redis_server, socket_connect_timeout=2, socket_timeout=2)
    try:
        for key in client.scan_iter(match=f"{prefix}*"):
            client.delete(key)
    finally:
        client.close()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test (migrating once is faster than per test)."""
    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    _off_loop(migrate.upgrade, f"sqlite+aiosqlite:///{path}")
    return path


async def _truncate(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            names = ", ".join(t.name for t in metadata.sorted_tables)
            await conn.execute(sa.text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    finally:
        await engine.dispose()


async def empty_database(request: pytest.FixtureRequest, kind: str, tmp_path: Path) -> str:
    """The URL of a migrated, empty database of `kind` ("sqlite" or "postgres") for one test."""
    if kind == "sqlite":
        path = tmp_path / "chat.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite+aiosqlite:///{path}"
    url: str = request.getfixturevalue("postgres_database")
    await _truncate(url)
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Every repository/RPC test runs on both databases."""
    return await empty_database(request, request.param, tmp_path)


NO_SKIPS = os.environ.get("CHAT_TEST_NO_SKIPS", "") not in ("", "0", "false")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """CI (`CHAT_TEST_NO_SKIPS=1`, set by .ci/run) counts a skipped test as a failure: a check that did not run
    is not a check that passed."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if NO_SKIPS and skipped and exitstatus == pytest.ExitCode.OK:
        reporter.write_line(f"CHAT_TEST_NO_SKIPS: {len(skipped)} test(s) skipped; failing the run", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
