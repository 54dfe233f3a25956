"""The adapter for OpenAI-compatible servers (vLLM, llama.cpp server, LM Studio, ...) over plain httpx:
`POST {base}/chat/completions` streamed as server-sent events, and `GET {base}/models`."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from service.domain import (
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

logger = logging.getLogger(__name__)

_DONE = "[DONE]"


@dataclass(slots=True)
class _Reply:
    """A streamed reply as it accumulates from server-sent events."""

    pieces: int = 0
    reason: str | None = None
    usage: Usage | None = None
    done: bool = False

    def add(self, line: str) -> str:
        """Take one SSE line; return its text (often empty). Comments and non-`data` fields are skipped."""
        if not line.startswith("data:"):
            return ""
        data = line[len("data:") :].strip()
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

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # The trailing slash makes httpx append relative paths to the base path (`/v1/` + `models`).
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + "/", headers=headers, timeout=httpx.Timeout(timeout)
        )

    async def stream(self, prompt: Prompt) -> AsyncGenerator[str | Completion, None]:
        reply = _Reply()
        body = _request_body(prompt)
        try:
            async with self._client.stream("POST", "chat/completions", json=body) as response:
                if response.status_code != httpx.codes.OK:
                    raise await _status_error(response, prompt.model)
                async for line in response.aiter_lines():
                    if text := reply.add(line):
                        yield text
                    if reply.done:
                        break
        except httpx.HTTPError as exc:
            raise _transport_error(exc, started=reply.pieces > 0) from exc
        yield reply.completion(prompt)

    async def list_models(self) -> Sequence[ModelInfo]:
        try:
            response = await self._client.get("models")
        except httpx.HTTPError as exc:
            raise _transport_error(exc, started=False) from exc
        if response.status_code != httpx.codes.OK:
            raise await _status_error(response, "")
        try:
            entries = response.json()["data"]
            return [ModelInfo(name=str(entry["id"]), provider=self.name) for entry in entries]
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelFailed("the openai server sent a malformed model list") from exc

    async def aclose(self) -> None:
        await self._client.aclose()


def _request_body(prompt: Prompt) -> dict[str, Any]:
    return {
        "model": prompt.model,
        "messages": [{"role": turn.role.value, "content": turn.content} for turn in prompt.turns],
        "max_tokens": prompt.max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},  # the last event then carries the token counts
    }


def _parse_chunk(data: str) -> tuple[str, str | None, Usage | None]:
    """Text, finish reason and usage of one `chat.completion.chunk` event."""
    try:
        event = json.loads(data)
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


async def _status_error(response: httpx.Response, model: str) -> DomainError:
    """The domain error for a non-200 answer (nothing has been yielded yet)."""
    await response.aread()
    try:
        message = _message(response.json())
    except ValueError:
        message = ""
    status = response.status_code
    if model and (status == httpx.codes.NOT_FOUND or _names_missing_model(message, model)):
        return ModelNotFound(model)
    if status == httpx.codes.TOO_MANY_REQUESTS or status >= httpx.codes.INTERNAL_SERVER_ERROR:
        return ModelUnavailable(f"the openai server is unavailable (HTTP {status})")
    return upstream_failure("openai", f"rejected the request (HTTP {status})", message)


def _names_missing_model(message: str, model: str) -> bool:
    """Some servers answer an unknown model with a 400 whose text names it ("model `x` does not exist")."""
    lowered = message.lower()
    return model.lower() in lowered and ("not found" in lowered or "does not exist" in lowered)


def _transport_error(exc: httpx.HTTPError, *, started: bool) -> DomainError:
    if started:
        return ModelFailed("the connection to the openai server broke while the reply was streaming")
    if isinstance(exc, httpx.TimeoutException):
        return ModelUnavailable("the openai server did not answer in time")
    logger.warning("openai server unreachable: %s", type(exc).__name__)
    return ModelUnavailable("the openai server cannot be reached")
