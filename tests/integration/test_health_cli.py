"""`chat-service health`: what the container HEALTHCHECK runs against a real replica."""

from __future__ import annotations

import asyncio

import pytest

from service import cli
from tests.integration.harness import Replica
from tests.net import free_port


async def _health(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    # The check is a blocking client; the replica serves on this event loop, so it runs on a thread.
    code = await asyncio.to_thread(cli.main, ["health", *args])
    return code, capsys.readouterr().out  # the verdict; stderr holds the server's own log lines


async def test_serving_replica_is_healthy(replica: Replica, capsys: pytest.CaptureFixture[str]) -> None:
    code, output = await _health(capsys, "--listen", replica.address)
    assert (code, output.strip()) == (0, f"{replica.address}: SERVING")


async def test_wildcard_listen_address_is_checked_on_loopback(
    replica: Replica, capsys: pytest.CaptureFixture[str]
) -> None:
    port = replica.address.rpartition(":")[2]
    code, output = await _health(capsys, "--listen", f"0.0.0.0:{port}", "--service", "chat.v1.ChatService")
    assert (code, output.strip()) == (0, f"127.0.0.1:{port}: SERVING")


async def test_draining_replica_is_unhealthy(replica: Replica, capsys: pytest.CaptureFixture[str]) -> None:
    await replica.app.health.enter_graceful_shutdown()  # what SIGTERM does first
    code, output = await _health(capsys, "--listen", replica.address)
    assert (code, output.strip()) == (1, f"{replica.address}: NOT_SERVING")


async def test_unknown_service_is_unhealthy(replica: Replica, capsys: pytest.CaptureFixture[str]) -> None:
    code, output = await _health(capsys, "--listen", replica.address, "--service", "no.such.Service")
    assert (code, output.strip()) == (1, f"{replica.address}: NOT_FOUND")


async def test_nothing_listening_is_unhealthy(capsys: pytest.CaptureFixture[str]) -> None:
    address = f"127.0.0.1:{free_port()}"
    code, output = await _health(capsys, "--listen", address, "--timeout", "1")
    assert code == 1
    assert output.strip() in (f"{address}: UNAVAILABLE", f"{address}: DEADLINE_EXCEEDED")
