"""The benchmarks' servers still start on this tree.

`make bench` is not part of `make test`, so nothing else would notice a benchmark server that no longer builds the
app (a renamed module, a moved attribute): each one is started here on SQLite, must print `READY <port> <key>`,
and is stopped.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.bench.__main__ import ServerProcess

SERVERS = {
    "service": ["-m", "tests.bench.servers", "service"],
    "naive": ["-m", "tests.bench.servers", "naive"],
    "raw": ["-m", "tests.bench.servers", "raw"],
    "relay": ["-m", "tests.bench.servers", "relay", "--upstream", "http://127.0.0.1:9"],  # asked nothing here
    "scale": ["-m", "tests.bench.scale", "serve"],
}


@pytest.mark.parametrize("name", sorted(SERVERS))
def test_a_benchmark_server_starts_and_serves(name: str, tmp_path: Path) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path / 'bench.db'}"
    command = [sys.executable, *SERVERS[name], "--database", database]
    server = ServerProcess(command, tmp_path / "server.log")
    try:
        port, _key = server.ready(timeout=60)
        assert port > 0
        assert server.process.poll() is None, "the server exited after saying READY"
    except RuntimeError:
        pytest.fail(f"{name} did not start:\n{(tmp_path / 'server.log').read_text()[-3000:]}")
    finally:
        server.stop()
