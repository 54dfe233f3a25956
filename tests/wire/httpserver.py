"""A small HTTP/1.1 server on asyncio streams for the wire-format test servers (standard library only).

It serves on 127.0.0.1, port 0 by default, records every request, streams chunked responses, can drop a
connection mid-response, and notices when a client goes away while a response is streaming. The end of
the module is what the servers share when they run as processes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from types import TracebackType
from typing import Any, Self


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class Exchange:
    """One request being answered: send a whole response, or stream one in chunks."""

    def __init__(self, request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.request = request
        self._reader = reader
        self._writer = writer
        self._eof: asyncio.Task[bytes] | None = None
        self.client_gone = False
        self.dropped = False
        self.streamed = False

    async def send(self, status: int, body: bytes, content_type: str) -> None:
        head = f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        await self._write(_status_line(status) + head.encode() + b"\r\n" + body)

    async def send_json(self, status: int, payload: Any) -> None:
        await self.send(status, json.dumps(payload).encode(), "application/json; charset=utf-8")

    async def start_stream(self, content_type: str) -> None:
        # One streamed response per connection: the server then reads nothing more from the client, so an
        # end of file on the socket can only mean the client went away.
        head = f"Content-Type: {content_type}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        await self._write(_status_line(HTTPStatus.OK) + head.encode())
        self.streamed = True
        self._eof = asyncio.ensure_future(self._reader.read(1))

    async def send_chunk(self, data: bytes) -> bool:
        """Send one chunk; False when the client has gone away."""
        if self.client_gone or (self._eof is not None and self._eof.done()):
            return self._mark_gone()
        await self._write(b"%x\r\n%s\r\n" % (len(data), data))
        return not self.client_gone

    async def end_stream(self) -> None:
        await self._write(b"0\r\n\r\n")

    async def pause(self, seconds: float) -> bool:
        """Wait `seconds` (between chunks); False as soon as the client goes away."""
        if self._eof is None:
            await asyncio.sleep(seconds)
            return True
        done, _ = await asyncio.wait({self._eof}, timeout=seconds)
        if done:
            return self._mark_gone()
        return True

    async def drop(self) -> None:
        """Close the connection in the middle of the response (what a crashing backend looks like)."""
        self.dropped = True
        with contextlib.suppress(ConnectionError):
            await self._writer.drain()
        self._writer.close()

    def finish(self) -> None:
        if self._eof is not None:
            if self._eof.done() and not self._eof.cancelled():
                self._eof.exception()  # retrieved, so a reset connection is not reported as unhandled
            self._eof.cancel()

    async def _write(self, data: bytes) -> None:
        if self.client_gone:
            return
        try:
            self._writer.write(data)
            await self._writer.drain()
        except ConnectionError:
            self._mark_gone()

    def _mark_gone(self) -> bool:
        self.client_gone = True
        return False


Handler = Callable[[Exchange], Awaitable[None]]


class HttpServer:
    """Serves `handler` for every request; `requests` records what arrived, `client_gone` is set once a
    client closes its connection while a response is still streaming."""

    def __init__(self, handler: Handler, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self._handler = handler
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.requests: list[Request] = []
        self.client_gone = asyncio.Event()

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self._host, self._port)

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._exchanges(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _exchanges(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (request := await _read_request(reader)) is not None:
            self.requests.append(request)
            exchange = Exchange(request, reader, writer)
            try:
                await self._handler(exchange)
            finally:
                exchange.finish()
            if exchange.client_gone:
                self.client_gone.set()
            if exchange.client_gone or exchange.dropped or exchange.streamed:
                return


async def _read_request(reader: asyncio.StreamReader) -> Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None  # the client closed an idle keep-alive connection
    lines = head.decode("latin-1").split("\r\n")
    method, path, _version = lines[0].split(" ", 2)
    headers = {}
    for line in filter(None, lines[1:]):
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Request(method, path, headers, body)


def _status_line(status: int) -> bytes:
    return f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n".encode()


# ---------------------------------------------------------------------------------------------- standalone

REPLY_WORDS = ("The", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "again.")


@dataclass(frozen=True, slots=True)
class StandaloneOptions:
    port: int
    delay: float  # seconds before each reply token
    reply_tokens: int


def standalone_options(description: str, argv: Sequence[str] | None) -> StandaloneOptions:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--tokens-per-second", type=float, default=0.0, help="reply pace; 0 = no delay")
    parser.add_argument("--reply-tokens", type=int, default=16, help="reply length in tokens")
    args = parser.parse_args(argv)
    delay = 1.0 / args.tokens_per_second if args.tokens_per_second > 0 else 0.0
    return StandaloneOptions(args.port, delay, args.reply_tokens)


def reply_pieces(count: int) -> list[str]:
    """The deterministic reply of a standalone server: `count` word tokens."""
    return [("" if i == 0 else " ") + REPLY_WORDS[i % len(REPLY_WORDS)] for i in range(count)]


async def serve_until_stopped(server: HttpServer) -> None:
    """Serve until SIGINT or SIGTERM; print `listening on HOST:PORT` once serving (tests wait for it)."""
    async with server:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        print(f"listening on {server.url.removeprefix('http://')}", flush=True)
        await stop.wait()
