"""Running the installed `chat-service` console script as a user would."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

BIN = Path(sys.executable).parent


def command(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> str:
    """Run `chat-service ARGS`, return stdout; fail with its stderr."""
    result = subprocess.run(
        [str(BIN / "chat-service"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    assert result.returncode == 0, f"chat-service {' '.join(args)} failed:\n{result.stderr}"
    return result.stdout


class Server:
    """`chat-service serve` in a child process; waits for the line saying where it listens."""

    def __init__(self, *args: str, env: dict[str, str], log: Path) -> None:
        self.args = args
        self.env = {**os.environ, **env}
        self.log = log
        self.process: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 30) -> None:
        with self.log.open("a") as stderr:
            self.process = subprocess.Popen(
                [str(BIN / "chat-service"), "serve", *self.args],
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env=self.env,
            )
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if "listening on" in line:
                return
            if not line and self.process.poll() is not None:
                break
        raise AssertionError(f"server did not start:\n{self.log.read_text()[-4000:]}")

    def signal(self, signum: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float = 30) -> int:
        assert self.process is not None
        code = self.process.wait(timeout)
        self._close_pipe()
        return code

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._close_pipe()

    def _close_pipe(self) -> None:
        if self.process and self.process.stdout:
            self.process.stdout.close()


async def poll_until(check: Callable[[], Awaitable[T | None]], *, within: float, interval: float) -> T:
    """Call `check` every `interval` seconds until it returns something truthy; fail after `within` seconds."""
    async with asyncio.timeout(within):
        while True:
            result = await check()
            if result:
                return result
            await asyncio.sleep(interval)
