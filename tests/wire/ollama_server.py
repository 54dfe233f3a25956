"""A scriptable server speaking Ollama's wire format: `POST /api/chat` (NDJSON stream), `GET /api/tags`.

In tests:

    async with OllamaServer() as server:
        server.enqueue(ChatScript(pieces=["Hi", "!"], delay=0.01))   # the next /api/chat; then `script`
        provider = OllamaProvider(server.url, timeout=5)
        ...
        server.requests[-1].json()["options"]["num_predict"]

As a process (for tests that run the whole service against it):

    python -m tests.wire.ollama_server --port 0 --tokens-per-second 50 --reply-tokens 20

prints `listening on 127.0.0.1:PORT` once it serves, lists the default models, and answers every
/api/chat, whatever the model, with the same reply.
"""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from types import TracebackType
from typing import Any, Self

from tests.wire.httpserver import (
    Exchange,
    HttpServer,
    Request,
    reply_pieces,
    serve_until_stopped,
    standalone_options,
)

NDJSON = "application/x-ndjson"


@dataclass(frozen=True)
class ChatScript:
    """How the server answers one `/api/chat`."""

    pieces: Sequence[str] = ("Hello", ",", " world", "!")
    delay: float = 0.0  # seconds before each piece
    done_reason: str = "stop"  # "length" anyway when `options.num_predict` cuts the pieces short
    prompt_eval_count: int | None = 12  # None leaves the metrics out, as Ollama may
    eval_count: int | None = None  # default: the number of pieces sent
    status: int = HTTPStatus.OK  # anything else: answer `{"error": error}` with it, nothing streamed
    error: str = "llama runner process has terminated: exit status 2"
    error_after: int | None = None  # send an `{"error": error}` line after this many pieces (status 200)
    drop_after: int | None = None  # close the connection after this many pieces
    end_after: int | None = None  # end the stream cleanly after this many pieces, without `done: true`
    garbage_after: int | None = None  # send a line that is not JSON after this many pieces
    stall_after: int | None = None  # send nothing more after this many pieces, until the client gives up


@dataclass(frozen=True)
class TagModel:
    """One entry of `/api/tags`."""

    name: str
    family: str = "llama"
    parameter_size: str = "3.2B"
    quantization_level: str = "Q4_K_M"
    size: int = 2_019_393_189

    def wire(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.name,
            "modified_at": "2025-01-01T00:00:00.000000000Z",
            "size": self.size,
            "digest": "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72",
            "details": {
                "parent_model": "",
                "format": "gguf",
                "family": self.family,
                "families": [self.family],
                "parameter_size": self.parameter_size,
                "quantization_level": self.quantization_level,
            },
        }


DEFAULT_MODELS = (TagModel("llama3.2:latest"), TagModel("qwen2.5:0.5b", "qwen2", "494.03M", "Q4_K_M", 397_821_319))


class OllamaServer:
    """Serves Ollama's API from scripts: `/api/tags` lists `models`, and `/api/chat` answers 404 for any
    other model unless `any_model`."""

    def __init__(
        self,
        *,
        models: Sequence[TagModel] = DEFAULT_MODELS,
        any_model: bool = False,
        script: ChatScript | None = None,
        port: int = 0,
    ) -> None:
        self.models = models
        self.any_model = any_model
        self.script = script or ChatScript()
        self._queued: collections.deque[ChatScript] = collections.deque()
        self.http = HttpServer(self._handle, port=port)

    @property
    def url(self) -> str:
        return self.http.url

    @property
    def requests(self) -> list[Request]:
        return self.http.requests

    @property
    def chat_requests(self) -> list[dict[str, Any]]:
        """The JSON bodies of the `/api/chat` requests received, oldest first."""
        return [r.json() for r in self.http.requests if r.path == "/api/chat"]

    @property
    def client_gone(self) -> asyncio.Event:
        """Set once a client closed its connection while a reply was still streaming."""
        return self.http.client_gone

    def enqueue(self, *scripts: ChatScript) -> None:
        """Answer the next `/api/chat` requests with these scripts, in order; then with `script`."""
        self._queued.extend(scripts)

    async def __aenter__(self) -> Self:
        await self.http.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.http.stop()

    async def _handle(self, exchange: Exchange) -> None:
        request = exchange.request
        if (request.method, request.path) == ("POST", "/api/chat"):
            await self._chat(exchange, request.json())
        elif (request.method, request.path) == ("GET", "/api/tags"):
            await exchange.send_json(HTTPStatus.OK, {"models": [m.wire() for m in self.models]})
        else:  # what Go's mux says
            await exchange.send(HTTPStatus.NOT_FOUND, b"404 page not found", "text/plain; charset=utf-8")

    async def _chat(self, exchange: Exchange, body: dict[str, Any]) -> None:
        model = body.get("model", "")
        if not self._knows(model):
            await exchange.send_json(HTTPStatus.NOT_FOUND, {"error": f"model '{model}' not found"})
            return
        script = self._queued.popleft() if self._queued else self.script
        if script.status != HTTPStatus.OK:
            await exchange.send_json(script.status, {"error": script.error})
            return
        limit = (body.get("options") or {}).get("num_predict")
        pieces = list(script.pieces if limit is None or limit < 0 else script.pieces[:limit])
        reason = "length" if len(pieces) < len(script.pieces) else script.done_reason
        await exchange.start_stream(NDJSON)
        if await _stream(exchange, model, pieces, script):
            await _send(exchange, _final(model, reason, len(pieces), script))
            await exchange.end_stream()

    def _knows(self, model: str) -> bool:
        if self.any_model:
            return True
        names = {m.name for m in self.models}
        return model in names or f"{model}:latest" in names  # the tag defaults to `latest`


async def _stream(exchange: Exchange, model: str, pieces: Sequence[str], script: ChatScript) -> bool:
    """Send the pieces as the script says; False when the stream is over without a final chunk. An `*_after`
    equal to the number of pieces acts after the last one."""
    for index in range(len(pieces) + 1):
        if index == script.drop_after:
            await exchange.drop()
            return False
        if index == script.error_after:
            await _send(exchange, {"error": script.error})
            await exchange.end_stream()
            return False
        if index == script.end_after:
            await exchange.end_stream()
            return False
        if index == script.garbage_after:
            await exchange.send_chunk(b'{"model": "x", "message": {"content": "unterminated\n')
            await exchange.end_stream()
            return False
        if index == script.stall_after:
            await exchange.pause(3600.0)  # returns when the client goes away
            return False
        if index == len(pieces):
            return True
        if not await exchange.pause(script.delay):
            return False
        chunk = {"model": model, "created_at": _now(), "message": {"role": "assistant", "content": pieces[index]}}
        if not await _send(exchange, {**chunk, "done": False}):
            return False
    return True


def _final(model: str, reason: str, sent: int, script: ChatScript) -> dict[str, Any]:
    final: dict[str, Any] = {
        "model": model,
        "created_at": _now(),
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": reason,
        "total_duration": 1_500_000_000,
        "load_duration": 20_000_000,
    }
    if script.prompt_eval_count is not None:
        eval_count = sent if script.eval_count is None else script.eval_count
        final |= {
            "prompt_eval_count": script.prompt_eval_count,
            "prompt_eval_duration": 80_000_000,
            "eval_count": eval_count,
            "eval_duration": 1_400_000_000,
        }
    return final


async def _send(exchange: Exchange, payload: dict[str, Any]) -> bool:
    return await exchange.send_chunk(json.dumps(payload).encode() + b"\n")


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def main(argv: Sequence[str] | None = None) -> None:
    options = standalone_options("A scripted Ollama server for tests.", argv)
    script = ChatScript(pieces=reply_pieces(options.reply_tokens), delay=options.delay)
    server = OllamaServer(any_model=True, script=script, port=options.port)
    asyncio.run(serve_until_stopped(server.http))


if __name__ == "__main__":
    main()
