"""What an operator sees when `chat-service` cannot start: one JSON log line on stderr that names the problem
and says what to do, a non-zero exit, never a traceback. And `migrate` creates a missing Postgres database."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from service.storage import migrate
from tests.conftest import POSTGRES_URL, _off_loop, _postgres_admin
from tests.e2e.process import BIN
from tests.net import free_port

pytestmark = pytest.mark.e2e


@dataclass
class Run:
    code: int
    stdout: str
    lines: list[dict[str, Any]]  # stderr, every line parsed as JSON

    @property
    def error(self) -> dict[str, Any]:
        """The one error line."""
        errors = [line for line in self.lines if line["level"] == "error"]
        assert len(errors) == 1, self.lines
        assert errors[0]["hint"], errors[0]
        return errors[0]


def chat_service(*args: str, **env: str) -> Run:
    result = subprocess.run(
        [str(BIN / "chat-service"), *args],
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, "CHAT_LLM_PROVIDER": "fake", **env},
    )
    assert "Traceback" not in result.stderr, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines()]  # fails on any line that is not JSON
    return Run(result.returncode, result.stdout, lines)


def postgres_url(database: str, *, port: int | None = None) -> str:
    url = sa.make_url(POSTGRES_URL).set(database=database)
    return (url.set(port=port) if port else url).render_as_string(hide_password=False)


def where(url: str) -> str:
    parsed = sa.make_url(url)
    return f"database {parsed.database!r} on {parsed.host}:{parsed.port or 5432}"


@pytest.fixture
def new_database(postgres_database: str) -> Iterator[str]:
    """The URL of a Postgres database that does not exist yet (dropped afterwards if a test created it)."""
    name = f"chat_new_{uuid.uuid4().hex[:12]}"
    yield postgres_url(name)
    _off_loop(asyncio.run, _postgres_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def limited_user(postgres_database: str) -> Iterator[str]:
    """A Postgres role that may log in, and nothing else (no CREATEDB, no grants)."""
    name = f"chat_limited_{uuid.uuid4().hex[:12]}"
    _off_loop(asyncio.run, _postgres_admin(f'CREATE ROLE "{name}" LOGIN'))
    yield name
    _off_loop(asyncio.run, _postgres_admin(f'DROP ROLE IF EXISTS "{name}"'))


def as_user(url: str, user: str) -> str:
    return sa.make_url(url).set(username=user, password=None).render_as_string(hide_password=False)


def listen() -> str:
    return f"127.0.0.1:{free_port()}"


# ------------------------------------------------------------------------------------------- migrate


def test_migrate_creates_a_missing_postgres_database_and_says_so_once(new_database: str) -> None:
    first = chat_service("migrate", "--database-url", new_database)
    again = chat_service("migrate", "--database-url", new_database)

    head = migrate.current_head()
    assert (first.code, first.stdout.splitlines()) == (
        0,
        [f"created the {where(new_database)}", f"migrated the {where(new_database)} to {head}"],
    )
    assert (again.code, again.stdout.splitlines()) == (0, [f"migrated the {where(new_database)} to {head}"])
    created = chat_service("keys", "create", "--user", "alice", "--database-url", new_database)
    assert created.code == 0 and created.stdout.splitlines()[-1].startswith("csk_")


def test_migrate_says_who_may_create_the_database_when_the_user_may_not(new_database: str, limited_user: str) -> None:
    url = as_user(new_database, limited_user)

    run = chat_service("migrate", "--database-url", url)

    assert run.code == 1
    assert run.error["event"] == f"the {where(url)} does not exist and user {limited_user!r} may not create it"
    assert "CREATEDB" in run.error["hint"]


def test_migrate_cannot_reach_the_database() -> None:
    url = postgres_url("chat", port=free_port())

    run = chat_service("migrate", "--database-url", url)

    assert run.code == 1
    assert run.error["event"].startswith(f"cannot reach the {where(url)}: ConnectionRefusedError")
    assert "CHAT_DATABASE_URL" in run.error["hint"]


# --------------------------------------------------------------------------------------- serve, keys


@pytest.mark.parametrize("command", [["serve", "--listen", "127.0.0.1:0"], ["keys", "list"]])
def test_a_missing_database_is_named_with_the_command_that_creates_it(new_database: str, command: list[str]) -> None:
    run = chat_service(*command, "--database-url", new_database)

    assert run.code == 1
    assert run.error["event"] == f"the {where(new_database)} does not exist"
    assert "chat-service migrate" in run.error["hint"]


@pytest.mark.parametrize(
    "command", [["serve", "--listen", "127.0.0.1:0"], ["keys", "create", "--user", "alice"], ["keys", "revoke", "k"]]
)
def test_an_unreachable_database_is_named_with_what_to_check(command: list[str]) -> None:
    url = postgres_url("chat", port=free_port())  # nothing listens there

    run = chat_service(*command, "--database-url", url)

    assert run.code == 1
    assert run.error["event"].startswith(f"cannot reach the {where(url)}: ConnectionRefusedError")
    assert "Postgres is running" in run.error["hint"]


def test_the_password_never_appears() -> None:
    url = postgres_url("chat", port=free_port()).replace("postgres@", "postgres:hunter2-secret@")

    run = chat_service("serve", "--listen", "127.0.0.1:0", "--database-url", url)

    assert run.code == 1 and "hunter2-secret" not in json.dumps(run.lines)


def test_a_database_without_the_schema_asks_for_migrate(new_database: str) -> None:
    _off_loop(asyncio.run, migrate.ensure_database(new_database))  # created, never migrated

    run = chat_service("serve", "--listen", "127.0.0.1:0", "--database-url", new_database)

    assert run.code == 1
    assert run.error["event"] == f"the {where(new_database)} has no schema"
    assert "chat-service migrate" in run.error["hint"]


def test_a_database_the_user_may_not_read(postgres_database: str, limited_user: str) -> None:
    url = as_user(postgres_database, limited_user)

    run = chat_service("keys", "list", "--database-url", url)

    assert run.code == 1
    assert run.error["event"] == (
        f"the {where(url)} failed a statement: InsufficientPrivilegeError: permission denied for table alembic_version"
    )
    assert limited_user in run.error["hint"]


def test_a_schema_older_than_the_code_asks_for_migrate(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    migrate.upgrade(url, "0002_search")

    run = chat_service("serve", "--listen", "127.0.0.1:0", "--database-url", url, CHAT_AUTO_MIGRATE="false")

    assert run.code == 1
    assert run.error["event"] == (
        f"the SQLite database {tmp_path / 'old.db'} is at schema revision 0002_search; "
        f"this version needs {migrate.current_head()}"
    )


def test_an_sqlite_file_that_cannot_be_opened(tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "dir" / "chat.db"

    run = chat_service("serve", "--listen", "127.0.0.1:0", "--database-url", f"sqlite+aiosqlite:///{path}")

    assert run.code == 1
    assert run.error["event"] == f"cannot open the SQLite database {path}: its directory {path.parent} does not exist"


def test_a_listen_port_in_use(database_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"

        run = chat_service("serve", "--listen", address, "--database-url", database_url)

    assert run.code == 1
    assert run.error["event"] == f"cannot listen on {address}: Address already in use"
    assert "--listen" in run.error["hint"]


def test_a_metrics_port_in_use(database_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        run = chat_service("serve", "--listen", listen(), "--database-url", database_url, CHAT_METRICS_PORT=str(port))

    assert run.code == 1
    assert run.error["event"] == f"cannot serve /metrics on 127.0.0.1:{port}: Address already in use"


def test_an_invalid_setting_is_named_by_its_variable() -> None:
    run = chat_service("serve", CHAT_LISTEN="nowhere", CHAT_RATE_LIMIT_PER_MINUTE="-1")

    assert run.code == 2
    assert run.error["event"] == (
        "invalid configuration: CHAT_LISTEN: must be host:port; "
        "CHAT_RATE_LIMIT_PER_MINUTE: Input should be greater than or equal to 0"
    )
