"""A scriptable server speaking the OpenAI chat-completions wire format, as vLLM, llama.cpp server and LM
Studio do: `POST /v1/chat/completions` streamed as server-sent events, and `GET /v1/models`.

In tests:

    async with OpenAIServer(api_key="sk-test") as server:
        server.enqueue(CompletionScript(pieces=["Hi", "!"], delay=0.01))   # the next request; then `script`
        provider = OpenAIProvider(server.url, api_key="sk-test", timeout=5)   # server.url ends in /v1

As a process:

    python -m tests.wire.openai_server --port 0 --tokens-per-second 50 --reply-tokens 20

prints `listening on 127.0.0.1:PORT` once it serves, lists the default models, and answers every chat
completion, whatever the model, with the same reply.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
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

SSE = "text/event-stream; charset=utf-8"
CHUNK_ID = "chatcmpl-7f3a9c"
# "default" is the service's default model name for this provider.
DEFAULT_MODELS = ("default", "qwen2.5-0.5b-instruct", "llama-3.2-3b-instruct")


@dataclass(frozen=True)
class CompletionScript:
    """How the server answers one chat completion."""

    pieces: Sequence[str] = ("Hello", ",", " world", "!")
    delay: float = 0.0  # seconds before each piece
    finish_reason: str = "stop"  # "length" anyway when `max_tokens` cuts the pieces short
    prompt_tokens: int = 12
    send_usage: bool = True  # when the request asks with `stream_options.include_usage`
    send_done: bool = True  # end with `data: [DONE]`
    status: int = HTTPStatus.OK  # anything else: answer an OpenAI error body with it, nothing streamed
    error: str = "The server had an error while processing your request."
    error_after: int | None = None  # send an `{"error": ...}` event after this many pieces (status 200)
    drop_after: int | None = None  # close the connection after this many pieces
    malformed_after: int | None = None  # send a `data:` line that is not JSON after this many pieces
    end_after: int | None = None  # end the stream cleanly after this many pieces: no finish, no [DONE]


class OpenAIServer:
    """Serves the OpenAI API from scripts: `/v1/models` lists `models`, and chat completions answer 404
    for any other model unless `any_model`. With `api_key`, requests without `Authorization: Bearer
    <api_key>` get a 401."""

    def __init__(
        self,
        *,
        models: Sequence[str] = DEFAULT_MODELS,
        any_model: bool = False,
        api_key: str | None = None,
        script: CompletionScript | None = None,
        port: int = 0,
    ) -> None:
        self.models = models
        self.any_model = any_model
        self.api_key = api_key
        self.script = script or CompletionScript()
        self._queued: collections.deque[CompletionScript] = collections.deque()
        self.http = HttpServer(self._handle, port=port)

    @property
    def url(self) -> str:
        """The base URL clients are configured with (the API lives under `/v1`)."""
        return self.http.url + "/v1"

    @property
    def requests(self) -> list[Request]:
        return self.http.requests

    @property
    def chat_requests(self) -> list[dict[str, Any]]:
        """The JSON bodies of the chat-completion requests received, oldest first."""
        return [r.json() for r in self.http.requests if r.path == "/v1/chat/completions"]

    @property
    def client_gone(self) -> asyncio.Event:
        """Set once a client closed its connection while a reply was still streaming."""
        return self.http.client_gone

    def enqueue(self, *scripts: CompletionScript) -> None:
        """Answer the next chat completions with these scripts, in order; then with `script`."""
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
        if not self._authorized(request):
            await _error(exchange, HTTPStatus.UNAUTHORIZED, "Incorrect API key provided.", "invalid_api_key")
        elif (request.method, request.path) == ("POST", "/v1/chat/completions"):
            await self._chat(exchange, request.json())
        elif (request.method, request.path) == ("GET", "/v1/models"):
            models = [{"id": m, "object": "model", "created": 0, "owned_by": "test"} for m in self.models]
            await exchange.send_json(HTTPStatus.OK, {"object": "list", "data": models})
        else:
            await _error(exchange, HTTPStatus.NOT_FOUND, f"Unknown path {request.path}", "not_found")

    def _authorized(self, request: Request) -> bool:
        if self.api_key is None:
            return True
        expected = f"Bearer {self.api_key}".encode()
        return hmac.compare_digest(request.headers.get("authorization", "").encode(), expected)

    async def _chat(self, exchange: Exchange, body: dict[str, Any]) -> None:
        model = body.get("model", "")
        if not self.any_model and model not in self.models:
            await _error(exchange, HTTPStatus.NOT_FOUND, f"The model `{model}` does not exist.", "model_not_found")
            return
        script = self._queued.popleft() if self._queued else self.script
        if script.status != HTTPStatus.OK:
            await _error(exchange, script.status, script.error, "server_error")
            return
        limit = body.get("max_tokens")
        pieces = list(script.pieces if limit is None else script.pieces[:limit])
        reason = "length" if len(pieces) < len(script.pieces) else script.finish_reason
        await exchange.start_stream(SSE)
        if not await _stream(exchange, model, pieces, script):
            return
        await _event(exchange, _chunk(model, {}, reason))
        if script.send_usage and (body.get("stream_options") or {}).get("include_usage"):
            await _event(exchange, _usage_chunk(model, script.prompt_tokens, len(pieces)))
        if script.send_done:
            await exchange.send_chunk(b"data: [DONE]\n\n")
        await exchange.end_stream()


async def _stream(exchange: Exchange, model: str, pieces: Sequence[str], script: CompletionScript) -> bool:
    """Send the role chunk and the pieces as the script says; False when the stream ended early."""
    await _event(exchange, _chunk(model, {"role": "assistant", "content": ""}, None))
    for index, piece in enumerate(pieces):
        if index == script.drop_after:
            await exchange.drop()
            return False
        if index == script.error_after:
            await _event(exchange, {"error": {"message": script.error, "type": "server_error", "code": 500}})
            await exchange.end_stream()
            return False
        if index == script.malformed_after:
            await exchange.send_chunk(b'data: {"id": "chatcmpl-7f3a9c", "choices": [\n\n')
            await exchange.end_stream()
            return False
        if index == script.end_after:
            await exchange.end_stream()
            return False
        if not await exchange.pause(script.delay):
            return False
        if not await _event(exchange, _chunk(model, {"content": piece}, None)):
            return False
    return True


def _chunk(model: str, delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
    return {
        "id": CHUNK_ID,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


def _usage_chunk(model: str, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    return {**_chunk(model, {}, None), "choices": [], "usage": usage}


async def _event(exchange: Exchange, payload: dict[str, Any]) -> bool:
    return await exchange.send_chunk(b"data: " + json.dumps(payload).encode() + b"\n\n")


async def _error(exchange: Exchange, status: int, message: str, code: str) -> None:
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": code}
    await exchange.send_json(status, {"error": error})


def main(argv: Sequence[str] | None = None) -> None:
    options = standalone_options("A scripted OpenAI-compatible chat server for tests.", argv)
    script = CompletionScript(pieces=reply_pieces(options.reply_tokens), delay=options.delay)
    server = OpenAIServer(any_model=True, script=script, port=options.port)
    asyncio.run(serve_until_stopped(server.http))


if __name__ == "__main__":
    main()
