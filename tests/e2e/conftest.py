"""Fixtures of the end-to-end tests: `chat-service serve` processes started as a user would."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.process import Server
from tests.net import free_port

ServerFactory = Callable[..., Server]


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[ServerFactory]:
    """Start `chat-service serve` processes (fake model unless told otherwise); all killed at the end."""
    started: list[Server] = []

    def start(database_url: str, **env: str) -> Server:
        values = {
            "CHAT_DATABASE_URL": database_url,
            "CHAT_LISTEN": f"127.0.0.1:{free_port()}",
            "CHAT_LLM_PROVIDER": "fake",
            "CHAT_FAKE_TOKENS_PER_SECOND": "40",
            "CHAT_FAKE_REPLY_TOKENS": "200",
            "CHAT_AUTO_MIGRATE": "true",
            **env,
        }
        server = Server(env=values, log=tmp_path / f"server-{len(started)}.log")
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
