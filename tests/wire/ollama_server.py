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

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from aiohttp import web

from tests.wire.httpserver import (
    ChatScript,
    ChatServer,
    json_line,
    reply_pieces,
    serve_standalone,
    standalone_options,
)

__all__ = ["DEFAULT_MODELS", "ChatScript", "OllamaServer", "TagModel"]


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


class OllamaServer(ChatServer):
    """Serves Ollama's API from scripts: `/api/tags` lists `models`, and `/api/chat` answers 404 for any
    other model unless `any_model`."""

    chat_path = "/api/chat"
    media_type = "application/x-ndjson"
    garbage = b'{"model": "x", "message": {"content": "unterminated\n'

    def __init__(
        self,
        *,
        models: Sequence[TagModel] = DEFAULT_MODELS,
        any_model: bool = False,
        script: ChatScript | None = None,
        port: int = 0,
    ) -> None:
        self.models = models
        super().__init__(any_model=any_model, script=script, port=port)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/api/chat", self.chat),
            web.get("/api/tags", self._tags),
            web.route("*", "/{path:.*}", _go_not_found),
        ]

    async def _tags(self, request: web.Request) -> web.Response:
        return web.json_response({"models": [m.wire() for m in self.models]})

    def knows(self, model: str) -> bool:
        if self.any_model:
            return True
        names = {m.name for m in self.models}
        return model in names or f"{model}:latest" in names  # the tag defaults to `latest`

    def unknown_model(self, model: str) -> web.Response:
        return web.json_response({"error": f"model '{model}' not found"}, status=HTTPStatus.NOT_FOUND)

    def failure(self, script: ChatScript) -> web.Response:
        return web.json_response({"error": script.error}, status=script.status)

    def reply_limit(self, body: dict[str, Any]) -> int | None:
        limit: int | None = (body.get("options") or {}).get("num_predict")
        return limit

    def piece(self, model: str, text: str) -> bytes:
        message = {"role": "assistant", "content": text}
        return json_line({"model": model, "created_at": _now(), "message": message, "done": False})

    def error_line(self, message: str) -> bytes:
        return json_line({"error": message})

    def ending(self, model: str, reason: str, sent: int, script: ChatScript, body: dict[str, Any]) -> list[bytes]:
        final: dict[str, Any] = {
            "model": model,
            "created_at": _now(),
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": reason,
            "total_duration": 1_500_000_000,
            "load_duration": 20_000_000,
        }
        if script.prompt_tokens is not None:  # Ollama leaves all the counts out, or none
            final |= {
                "prompt_eval_count": script.prompt_tokens,
                "prompt_eval_duration": 80_000_000,
                "eval_count": sent if script.completion_tokens is None else script.completion_tokens,
                "eval_duration": 1_400_000_000,
            }
        return [json_line(final)]


async def _go_not_found(request: web.Request) -> web.Response:
    return web.Response(status=HTTPStatus.NOT_FOUND, text="404 page not found")  # what Go's mux says


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def main(argv: Sequence[str] | None = None) -> None:
    options = standalone_options("A scripted Ollama server for tests.", argv)
    script = ChatScript(pieces=reply_pieces(options.reply_tokens), delay=options.delay)
    serve_standalone(OllamaServer(any_model=True, script=script, port=options.port))


if __name__ == "__main__":
    main()
