"""A scriptable server speaking the OpenAI chat-completions wire format, as vLLM, llama.cpp server and LM
Studio do: `POST /v1/chat/completions` streamed as server-sent events, and `GET /v1/models`.

In tests:

    async with OpenAIServer(api_key="sk-test") as server:
        server.enqueue(ChatScript(pieces=["Hi", "!"], delay=0.01))   # the next request; then `script`
        provider = OpenAIProvider(server.url, api_key="sk-test", timeout=5)   # server.url ends in /v1

As a process:

    python -m tests.wire.openai_server --port 0 --tokens-per-second 50 --reply-tokens 20

prints `listening on 127.0.0.1:PORT` once it serves, lists the default models, and answers every chat
completion, whatever the model, with the same reply.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from aiohttp import web

from tests.wire.httpserver import (
    ChatScript,
    ChatServer,
    Handler,
    bearer_ok,
    reply_pieces,
    serve_standalone,
    standalone_options,
)

__all__ = ["DEFAULT_MODELS", "ChatScript", "OpenAIServer", "openai_error"]

CHUNK_ID = "chatcmpl-7f3a9c"
# "default" is the service's default model name for this provider.
DEFAULT_MODELS = ("default", "qwen2.5-0.5b-instruct", "llama-3.2-3b-instruct")


def openai_error(status: int, message: str, code: str | None) -> web.Response:
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": code}
    return web.json_response({"error": error}, status=status)


def authorized(api_key: str | None, handler: Handler) -> Handler:
    """`handler`, behind a 401 for requests without `Authorization: Bearer <api_key>` (with a key)."""

    async def checked(request: web.Request) -> web.StreamResponse:
        if not bearer_ok(request, api_key):
            return openai_error(HTTPStatus.UNAUTHORIZED, "Incorrect API key provided.", "invalid_api_key")
        return await handler(request)

    return checked


class OpenAIServer(ChatServer):
    """Serves the OpenAI API from scripts: `/v1/models` lists `models`, and chat completions answer 404
    for any other model unless `any_model`. With `api_key`, requests without `Authorization: Bearer
    <api_key>` get a 401."""

    base_path = "/v1"
    chat_path = "/v1/chat/completions"
    media_type = "text/event-stream; charset=utf-8"
    garbage = b'data: {"id": "chatcmpl-7f3a9c", "choices": [\n\n'

    def __init__(
        self,
        *,
        models: Sequence[str] = DEFAULT_MODELS,
        any_model: bool = False,
        api_key: str | None = None,
        script: ChatScript | None = None,
        port: int = 0,
    ) -> None:
        self.models = models
        self.api_key = api_key
        super().__init__(any_model=any_model, script=script, port=port)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post(self.chat_path, authorized(self.api_key, self.chat)),
            web.get("/v1/models", authorized(self.api_key, self._models)),
            web.route("*", "/{path:.*}", authorized(self.api_key, _not_found)),
        ]

    async def _models(self, request: web.Request) -> web.Response:
        models = [{"id": m, "object": "model", "created": 0, "owned_by": "test"} for m in self.models]
        return web.json_response({"object": "list", "data": models})

    def knows(self, model: str) -> bool:
        return self.any_model or model in self.models

    def unknown_model(self, model: str) -> web.Response:
        return openai_error(HTTPStatus.NOT_FOUND, f"The model `{model}` does not exist.", "model_not_found")

    def failure(self, script: ChatScript) -> web.Response:
        return openai_error(script.status, script.error, "server_error")

    def reply_limit(self, body: dict[str, Any]) -> int | None:
        limit: int | None = body.get("max_tokens")
        return limit

    def opening(self, model: str) -> list[bytes]:
        return [_event(_chunk(model, {"role": "assistant", "content": ""}, None))]

    def piece(self, model: str, text: str) -> bytes:
        return _event(_chunk(model, {"content": text}, None))

    def error_line(self, message: str) -> bytes:
        return _event({"error": {"message": message, "type": "server_error", "code": 500}})

    def ending(self, model: str, reason: str, sent: int, script: ChatScript, body: dict[str, Any]) -> list[bytes]:
        lines = [_event(_chunk(model, {}, reason))]
        asked = (body.get("stream_options") or {}).get("include_usage")
        if script.prompt_tokens is not None and asked:
            completion = sent if script.completion_tokens is None else script.completion_tokens
            usage = {
                "prompt_tokens": script.prompt_tokens,
                "completion_tokens": completion,
                "total_tokens": script.prompt_tokens + completion,
            }
            lines.append(_event({**_chunk(model, {}, None), "choices": [], "usage": usage}))
        if script.send_done:
            lines.append(b"data: [DONE]\n\n")
        return lines


async def _not_found(request: web.Request) -> web.Response:
    return openai_error(HTTPStatus.NOT_FOUND, f"Unknown path {request.path}", "not_found")


def _chunk(model: str, delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
    return {
        "id": CHUNK_ID,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def main(argv: Sequence[str] | None = None) -> None:
    options = standalone_options("A scripted OpenAI-compatible chat server for tests.", argv)
    script = ChatScript(pieces=reply_pieces(options.reply_tokens), delay=options.delay)
    serve_standalone(OpenAIServer(any_model=True, script=script, port=options.port))


if __name__ == "__main__":
    main()
