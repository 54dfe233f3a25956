"""The base of the wire-format test servers, on aiohttp's web server: a server on 127.0.0.1 that records every
request and notices a client going away mid-response, and a chat server played from scripts.

A chat server (Ollama's, OpenAI's) streams each reply as a `ChatScript` says: pieces at a pace, an HTTP error,
or a reply that goes wrong after some pieces (an error line, a dropped connection, an early end, a line that is
not JSON, silence). A subclass says only how its wire format spells each of those. The end of the module is what
the servers share when they run as processes.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import hmac
import json
import signal
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from types import TracebackType
from typing import Any, Self

from aiohttp import web


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes
    client_port: int = 0  # the client's end of the connection it came on: equal ports, one reused connection

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class WireServer:
    """Serves `routes` on 127.0.0.1 (port 0: a free one). `requests` records what arrived; `client_gone` is set
    once a client goes away while its response is still being written."""

    def __init__(self, routes: Iterable[web.RouteDef], *, port: int = 0) -> None:
        self.app = web.Application(middlewares=[self._record], client_max_size=64 * 1024 * 1024)
        self.app.add_routes(routes)
        self._port = port
        self._runner: web.AppRunner | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self.requests: list[Request] = []
        self.client_gone = asyncio.Event()

    @property
    def port(self) -> int:
        assert self._runner is not None, "not started"
        port: int = self._runner.addresses[0][1]
        return port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        # Handlers are cancelled when their client disconnects: that is how a stream learns it has no reader.
        self._runner = web.AppRunner(self.app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self._port).start()

    async def stop(self) -> None:
        if self._runner is None:
            return
        self._stopping = True
        for task in list(self._handlers):  # streams still playing (a stalled one would hold shutdown up)
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._runner.cleanup()
        self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @web.middleware
    async def _record(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        headers = {name.lower(): value for name, value in request.headers.items()}
        peer = request.transport.get_extra_info("peername") if request.transport is not None else None
        port = int(peer[1]) if peer else 0
        self.requests.append(Request(request.method, request.path, headers, await request.read(), port))
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            return await handler(request)
        except asyncio.CancelledError:
            if not self._stopping:
                self.client_gone.set()
            raise
        finally:
            self._handlers.discard(task)

    def gone(self) -> None:
        self.client_gone.set()


class Served:
    """A server of the wire-format tests: `async with` serves it, `url` is what clients are configured with."""

    http: WireServer
    base_path = ""  # where the API lives, in the URL clients are configured with

    @property
    def url(self) -> str:
        return self.http.url + self.base_path

    @property
    def requests(self) -> list[Request]:
        return self.http.requests

    async def __aenter__(self) -> Self:
        await self.http.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.http.stop()


def bearer_ok(request: web.Request, api_key: str | None) -> bool:
    """Whether the request carries `Authorization: Bearer <api_key>` (always, without a key)."""
    if api_key is None:
        return True
    presented = request.headers.get("Authorization", "").encode()
    return hmac.compare_digest(presented, f"Bearer {api_key}".encode())


class Stream:
    """A chunked response being written to one client."""

    def __init__(self, request: web.Request, server: WireServer) -> None:
        self.request = request
        self.response = web.StreamResponse()
        self._server = server

    async def open(self, content_type: str) -> None:
        self.response.content_type, _, charset = content_type.partition("; charset=")
        self.response.charset = charset or None
        await self.response.prepare(self.request)

    async def send(self, data: bytes) -> bool:
        """Write `data`; False when the client has gone away."""
        try:
            await self.response.write(data)
        except ConnectionError:
            self._server.gone()
            return False
        return True

    async def end(self) -> None:
        """End the response cleanly (the last chunk of a chunked body)."""
        with contextlib.suppress(ConnectionError):
            await self.response.write_eof()

    def drop(self) -> None:
        """Close the connection in the middle of the response (what a crashing backend looks like)."""
        transport = self.request.transport
        if transport is not None:
            transport.close()


# ---------------------------------------------------------------------------------------------- chat servers


@dataclass(frozen=True)
class ChatScript:
    """How a chat server answers one chat request. An `*_after` equal to the number of pieces acts after the
    last one."""

    pieces: Sequence[str] = ("Hello", ",", " world", "!")
    delay: float = 0.0  # seconds before each piece
    finish_reason: str = "stop"  # "length" anyway when the request's token limit cuts the pieces short
    prompt_tokens: int | None = 12  # None: the server reports no usage at all, as some do
    completion_tokens: int | None = None  # default: the number of pieces sent
    send_done: bool = True  # OpenAI: end with `data: [DONE]`
    status: int = HTTPStatus.OK  # anything else: answer the format's error body with it, nothing streamed
    error: str = "llama runner process has terminated: exit status 2"
    error_after: int | None = None  # send the format's error line after this many pieces (status 200)
    drop_after: int | None = None  # close the connection after this many pieces
    end_after: int | None = None  # end the stream cleanly after this many pieces, without the final chunk
    garbage_after: int | None = None  # send a line that is not JSON after this many pieces
    stall_after: int | None = None  # send nothing more after this many pieces, until the client gives up
    after_ending: bytes = b""  # sent after the format's last line, before the body ends
    linger: bool = False  # after the last line, leave the body open until the client goes away
    end_delay: float = 0.0  # seconds between the last line and the body's end (a server finishing its handler)


class ChatServer(Served):
    """What Ollama's and OpenAI's servers share: models, scripts, and playing a script as a stream. Subclasses
    name their routes and spell each part of their wire format."""

    chat_path: str
    media_type: str
    garbage: bytes  # a line that is not JSON, as the format frames lines

    def __init__(self, *, any_model: bool, script: ChatScript | None, port: int) -> None:
        self.any_model = any_model
        self.script = script or ChatScript()
        self._queued: collections.deque[ChatScript] = collections.deque()
        self.http = WireServer(self.routes(), port=port)

    # What a format says.

    def routes(self) -> list[web.RouteDef]:
        raise NotImplementedError

    def knows(self, model: str) -> bool:
        raise NotImplementedError

    def unknown_model(self, model: str) -> web.Response:
        raise NotImplementedError

    def failure(self, script: ChatScript) -> web.Response:
        raise NotImplementedError

    def reply_limit(self, body: dict[str, Any]) -> int | None:
        raise NotImplementedError

    def opening(self, model: str) -> list[bytes]:
        return []

    def piece(self, model: str, text: str) -> bytes:
        raise NotImplementedError

    def error_line(self, message: str) -> bytes:
        raise NotImplementedError

    def ending(self, model: str, reason: str, sent: int, script: ChatScript, body: dict[str, Any]) -> list[bytes]:
        raise NotImplementedError

    # What they share.

    @property
    def chat_requests(self) -> list[dict[str, Any]]:
        """The JSON bodies of the chat requests received, oldest first."""
        return [r.json() for r in self.http.requests if r.path == self.chat_path]

    @property
    def client_gone(self) -> asyncio.Event:
        """Set once a client closed its connection while a reply was still streaming."""
        return self.http.client_gone

    def enqueue(self, *scripts: ChatScript) -> None:
        """Answer the next chat requests with these scripts, in order; then with `script`."""
        self._queued.extend(scripts)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model = body.get("model", "")
        if not self.knows(model):
            return self.unknown_model(model)
        script = self._queued.popleft() if self._queued else self.script
        if script.status != HTTPStatus.OK:
            return self.failure(script)
        limit = self.reply_limit(body)
        pieces = list(script.pieces if limit is None or limit < 0 else script.pieces[:limit])
        reason = "length" if len(pieces) < len(script.pieces) else script.finish_reason
        stream = Stream(request, self.http)
        await stream.open(self.media_type)
        if await self._play(stream, model, pieces, script):
            for line in self.ending(model, reason, len(pieces), script, body):
                await stream.send(line)
            if script.after_ending:
                await stream.send(script.after_ending)
            if script.linger:
                await asyncio.Event().wait()  # until the client goes away (the handler is then cancelled)
            await asyncio.sleep(script.end_delay)
            await stream.end()
        return stream.response

    async def _play(self, stream: Stream, model: str, pieces: Sequence[str], script: ChatScript) -> bool:
        """Send the pieces as the script says; False when the stream is over without its ending."""
        for line in self.opening(model):
            await stream.send(line)
        for index in range(len(pieces) + 1):
            if index == script.drop_after:
                stream.drop()
                return False
            if index in (script.error_after, script.end_after, script.garbage_after):
                if index == script.error_after:
                    await stream.send(self.error_line(script.error))
                elif index == script.garbage_after:
                    await stream.send(self.garbage)
                await stream.end()
                return False
            if index == script.stall_after:
                await asyncio.Event().wait()  # until the client goes away (the handler is then cancelled)
            if index == len(pieces):
                return True
            await asyncio.sleep(script.delay)
            if not await stream.send(self.piece(model, pieces[index])):
                return False
        return True


def json_line(payload: Any) -> bytes:
    return json.dumps(payload).encode() + b"\n"


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


def serve_standalone(server: ChatServer) -> None:
    """Serve until SIGINT or SIGTERM; print `listening on HOST:PORT` once serving (tests wait for it)."""

    async def serve() -> None:
        async with server:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, stop.set)
            print(f"listening on {server.http.url.removeprefix('http://')}", flush=True)
            await stop.wait()

    asyncio.run(serve())
