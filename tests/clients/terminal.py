"""Running the installed `chat` console script: piped as a script would, or on a pseudo-terminal as a person."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import re
import sys
from pathlib import Path

CHAT = str(Path(sys.executable).parent / "chat")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")

# Opening the terminal by name after setsid() makes it the controlling terminal, so Ctrl-C typed into it
# reaches the program as SIGINT, as in a real terminal.
# The program gets the terminal as a terminal emulator's shell would: as its controlling terminal, with Ctrl-C and
# Ctrl-\ delivered (a test run started in the background of a non-interactive shell inherits both ignored).
_ON_TTY = (
    "import os, signal, sys; fd = os.open(sys.argv[1], os.O_RDWR); [os.dup2(fd, n) for n in (0, 1, 2)]; "
    "[signal.signal(s, signal.SIG_DFL) for s in (signal.SIGINT, signal.SIGQUIT)]; "
    "os.execv(sys.argv[2], sys.argv[2:])"
)


def chat_env(address: str, key: str | None, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_") and k != "NO_COLOR"}
    env.update(CHAT_CLIENT_ADDRESS=address, CHAT_CLIENT_CONFIG=str(tmp_path / "no-config.toml"), **extra)
    if key is not None:
        env["CHAT_CLIENT_API_KEY"] = key
    return env


async def run_chat(*args: str, env: dict[str, str], stdin: str = "", limit: float = 60) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        CHAT,
        *args,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin.encode()), limit)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


class TerminalSession:
    """`chat` on a pseudo-terminal: `send` types, `expect` waits (bounded) for text on the screen."""

    def __init__(self, process: asyncio.subprocess.Process, master: int) -> None:
        self.process = process
        self.master = master
        self.raw = b""
        self._seen = 0

    @classmethod
    async def start(cls, *args: str, env: dict[str, str]) -> TerminalSession:
        master, slave = pty.openpty()
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _ON_TTY,
            os.ttyname(slave),
            CHAT,
            *args,
            env=env,
            start_new_session=True,
            stdin=slave,
            stdout=slave,
            stderr=slave,
        )
        os.close(slave)
        return cls(process, master)

    @property
    def screen(self) -> str:
        return _ANSI.sub("", self.raw.decode(errors="replace"))

    def send(self, text: str) -> None:
        os.write(self.master, text.encode())

    async def expect(self, text: str, limit: float = 30) -> str:
        """Wait until `text` appears after the previous match; return the screen text up to it."""
        async with asyncio.timeout(limit):
            while text not in self.screen[self._seen :]:
                chunk = await self._read()
                if not chunk:
                    raise AssertionError(f"chat exited before {text!r} appeared:\n{self.screen}")
                self.raw += chunk
        end = self.screen.index(text, self._seen) + len(text)
        before, self._seen = self.screen[self._seen : end], end
        return before

    async def wait(self, limit: float = 30) -> int:
        async with asyncio.timeout(limit):
            while chunk := await self._read():
                self.raw += chunk
            return await self.process.wait()

    async def close(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        with contextlib.suppress(OSError):
            os.close(self.master)

    async def _read(self) -> bytes:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[bytes] = loop.create_future()

        def readable() -> None:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: the program closed the terminal
                data = b""
            if not ready.done():
                ready.set_result(data)

        loop.add_reader(self.master, readable)
        try:
            return await ready
        finally:
            loop.remove_reader(self.master)
