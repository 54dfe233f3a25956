"""The adapter for OpenAI-compatible servers (vLLM, llama.cpp server, LM Studio, ...) over aiohttp
(service/llm/upstream.py): `POST {base}/chat/completions` streamed as server-sent events, and `GET {base}/models`."""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from service.domain import (
    ChatTurn,
    Completion,
    DomainError,
    ModelFailed,
    ModelInfo,
    ModelNotFound,
    ModelUnavailable,
    Prompt,
    Usage,
)
from service.llm import estimate_prompt_tokens, finish_reason, upstream_failure
from service.llm.upstream import TRANSPORT_ERRORS, Answer, Upstream

logger = logging.getLogger(__name__)

_DONE = b"[DONE]"


@dataclass(slots=True)
class _Reply:
    """A streamed reply as it accumulates from server-sent events."""

    pieces: int = 0
    reason: str | None = None
    usage: Usage | None = None
    done: bool = False

    def add(self, line: bytes) -> str:
        """Take one SSE line; return its text (often empty). Comments and non-`data` fields are skipped."""
        if not line.startswith(b"data:"):
            return ""
        data = line[5:].strip()
        if data == _DONE:
            self.done = True
            return ""
        text, reason, usage = _parse_chunk(data)
        self.reason = reason or self.reason
        self.usage = usage or self.usage
        self.pieces += bool(text)
        return text

    def completion(self, prompt: Prompt) -> Completion:
        # Some servers omit `[DONE]`; a finish reason also shows the reply ended on purpose.
        if not self.done and self.reason is None:
            raise ModelFailed("the openai server ended the reply before it was complete")
        # Servers that ignore `stream_options.include_usage` send no counts: ours are estimates, and say so.
        usage = self.usage or Usage(estimate_prompt_tokens(prompt.turns), self.pieces, estimated=True)
        return Completion(finish_reason(self.reason), usage)


class OpenAIProvider:
    """Implements `ports.Provider` for an OpenAI-compatible server (`base_url` like `http://host:8080/v1`)."""

    name = "openai"
    continues: bool
    takes_images = True  # as `image_url` content parts (data URLs); a text-only model says so in its error

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float,
        max_streams: int = 1024,
        continues: bool = False,
    ) -> None:
        # Continuing a partial reply needs the server to prefill the final assistant message: vLLM and the
        # llama.cpp server do (`continue_final_message`); OpenAI itself does not. CHAT_LLM_CONTINUE says.
        self.continues = continues
        self._upstream = Upstream(self.name, base_url, timeout=timeout, max_connections=max_streams, api_key=api_key)

    async def stream(self, prompt: Prompt) -> AsyncGenerator[str | Completion, None]:
        reply = _Reply()
        async with self._upstream.stream("/chat/completions", _request_body(prompt)) as (answer, lines):
            if answer.status != 200:
                raise _status_error(answer, prompt.model)
            try:
                async for line in lines:
                    if text := reply.add(line):
                        yield text
                    if reply.done:
                        await lines.finish()  # the connection is reused for the next reply
                        break
            except TRANSPORT_ERRORS as exc:
                raise self._upstream.transport_error(exc, started=reply.pieces > 0) from exc
            except ValueError as exc:
                raise ModelFailed("the openai server sent a malformed reply") from exc
        yield reply.completion(prompt)

    async def list_models(self) -> Sequence[ModelInfo]:
        answer = await self._upstream.get("/models")
        if answer.status != 200:
            raise _status_error(answer, "")
        try:
            entries = orjson.loads(answer.body)["data"]
            return [ModelInfo(name=str(entry["id"]), provider=self.name) for entry in entries]
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelFailed("the openai server sent a malformed model list") from exc

    async def aclose(self) -> None:
        await self._upstream.aclose()


def _request_body(prompt: Prompt) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": prompt.model,
        "messages": [_wire_message(turn) for turn in prompt.turns],
        "max_tokens": prompt.max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},  # the last event then carries the token counts
    }
    if prompt.prefix:  # vLLM's (and llama.cpp server's) assistant prefill
        body["messages"].append({"role": "assistant", "content": prompt.prefix})
        body |= {"continue_final_message": True, "add_generation_prompt": False}
    return body


def _wire_message(turn: ChatTurn) -> dict[str, Any]:
    if not turn.images:
        return {"role": turn.role.value, "content": turn.content}
    # With images, the content is a list of parts: the text, then each image as a data URL.
    parts: list[dict[str, Any]] = [{"type": "text", "text": turn.content}]
    for image in turn.images:
        url = f"data:{image.media_type};base64,{base64.b64encode(image.data).decode()}"
        parts.append({"type": "image_url", "image_url": {"url": url}})
    return {"role": turn.role.value, "content": parts}


def _parse_chunk(data: bytes) -> tuple[str, str | None, Usage | None]:
    """Text, finish reason and usage of one `chat.completion.chunk` event."""
    try:
        event = orjson.loads(data)
        if "error" in event:  # servers report a failure mid-stream as an event, the status stays 200
            raise upstream_failure("openai", "failed while generating the reply", _message(event))
        choices = event.get("choices") or [{}]
        delta = choices[0].get("delta") or {}
        return delta.get("content") or "", choices[0].get("finish_reason"), _usage(event.get("usage"))
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise ModelFailed("the openai server sent a malformed reply") from exc


def _usage(raw: Any) -> Usage | None:
    if not raw:
        return None
    return Usage(prompt_tokens=int(raw["prompt_tokens"]), completion_tokens=int(raw["completion_tokens"]))


def _message(body: Any) -> str:
    """The error text in any of the shapes these servers use: `{"error": {"message"}}`, `{"error": str}`,
    `{"message"}` (vLLM) or `{"detail"}` (FastAPI)."""
    if not isinstance(body, dict):
        return ""
    error = body.get("error", body)
    if isinstance(error, dict):
        error = error.get("message") or error.get("detail") or ""
    return error if isinstance(error, str) else ""


def _status_error(answer: Answer, model: str) -> DomainError:
    """The domain error for a non-200 answer (nothing has been yielded yet)."""
    message = _message(answer.json())
    status = answer.status
    if model and (status == 404 or _names_missing_model(message, model)):
        return ModelNotFound(model)
    if status == 429 or status >= 500:
        return ModelUnavailable(f"the openai server is unavailable (HTTP {status})")
    return upstream_failure("openai", f"rejected the request (HTTP {status})", message)


def _names_missing_model(message: str, model: str) -> bool:
    """Some servers answer an unknown model with a 400 whose text names it ("model `x` does not exist")."""
    lowered = message.lower()
    return model.lower() in lowered and ("not found" in lowered or "does not exist" in lowered)
