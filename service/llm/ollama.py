"""The Ollama adapter: `POST /api/chat` streamed as NDJSON, and `GET /api/tags`.

Spoken directly over aiohttp (service/llm/upstream.py) rather than through the `ollama` package: per token,
its httpx transport and pydantic models cost more CPU than everything else the service does.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncGenerator, Sequence
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


class OllamaProvider:
    """Implements `ports.Provider` for an Ollama server (`base_url` like `http://127.0.0.1:11434`)."""

    name = "ollama"
    continues = True  # a final assistant message is continued, not answered
    takes_images = True  # vision models read `images`; a model that cannot says so in its error

    def __init__(self, base_url: str, *, timeout: float, max_streams: int = 1024) -> None:
        self._upstream = Upstream(self.name, base_url, timeout=timeout, max_connections=max_streams)

    async def stream(self, prompt: Prompt) -> AsyncGenerator[str | Completion, None]:
        body = {
            "model": prompt.model,
            "messages": _messages(prompt),
            "stream": True,
            "options": {"num_predict": prompt.max_tokens},
        }
        pieces = 0
        final: dict[str, Any] | None = None
        async with self._upstream.stream("/api/chat", body) as (answer, lines):
            if answer.status != 200:
                raise _status_error(answer, prompt.model)
            try:
                async for line in lines:
                    chunk = orjson.loads(line)
                    if "error" in chunk:  # an `{"error": ..}` line after a 200: the generation itself failed
                        raise upstream_failure(self.name, "failed while generating the reply", str(chunk["error"]))
                    if chunk.get("done"):
                        final = chunk
                        await lines.finish()  # the connection is reused for the next reply
                        break
                    # Thinking models stream `message.thinking` with empty content: not part of the reply.
                    content = chunk["message"]["content"]
                    if content:
                        pieces += 1
                        yield content
            except (KeyError, TypeError, ValueError) as exc:  # orjson.JSONDecodeError is a ValueError
                raise ModelFailed(f"the {self.name} server sent a malformed reply") from exc
            except TRANSPORT_ERRORS as exc:
                raise self._upstream.transport_error(exc, started=pieces > 0) from exc
        if final is None:
            raise ModelFailed("the ollama server ended the reply before it was complete")
        yield _completion(final, prompt, pieces)

    async def list_models(self) -> Sequence[ModelInfo]:
        answer = await self._upstream.get("/api/tags")
        if answer.status != 200:
            raise _status_error(answer, "")
        try:
            listing = orjson.loads(answer.body)["models"]
            return [_model_info(model) for model in listing if model.get("model") or model.get("name")]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:  # a JSONDecodeError is a ValueError
            raise ModelFailed("the ollama server sent a malformed model list") from exc

    async def aclose(self) -> None:
        await self._upstream.aclose()


def _messages(prompt: Prompt) -> list[dict[str, Any]]:
    messages = [_wire_message(turn) for turn in prompt.turns]
    if prompt.prefix:
        messages.append({"role": "assistant", "content": prompt.prefix})
    return messages


def _wire_message(turn: ChatTurn) -> dict[str, Any]:
    message: dict[str, Any] = {"role": turn.role.value, "content": turn.content}
    if turn.images:  # Ollama takes a message's images as base64 strings, whatever their format
        message["images"] = [base64.b64encode(image.data).decode() for image in turn.images]
    return message


def _completion(final: dict[str, Any], prompt: Prompt, pieces: int) -> Completion:
    prompt_tokens, completion_tokens = final.get("prompt_eval_count"), final.get("eval_count")
    estimated = prompt_tokens is None or completion_tokens is None
    usage = Usage(
        prompt_tokens=estimate_prompt_tokens(prompt.turns) if prompt_tokens is None else int(prompt_tokens),
        completion_tokens=pieces if completion_tokens is None else int(completion_tokens),
        estimated=estimated,
    )
    return Completion(finish_reason(final.get("done_reason")), usage)


def _model_info(model: dict[str, Any]) -> ModelInfo:
    details = model.get("details") or {}
    return ModelInfo(
        name=str(model.get("model") or model.get("name")),
        provider=OllamaProvider.name,
        family=str(details.get("family") or ""),
        parameter_size=str(details.get("parameter_size") or ""),
        quantization_level=str(details.get("quantization_level") or ""),
        size_bytes=int(model.get("size") or 0),
    )


def _status_error(answer: Answer, model: str) -> DomainError:
    """The domain error for a non-200 answer (nothing has been yielded yet)."""
    body = answer.json()
    error = str(body.get("error", "")) if isinstance(body, dict) else ""
    status = answer.status
    # Ollama says "model 'x' not found"; a bare 404 means the URL does not point at an Ollama API.
    if status == 404 and model and "model" in error:
        return ModelNotFound(model)
    if status == 429 or status >= 500:
        return ModelUnavailable(f"the ollama server is unavailable (HTTP {status})")
    detail = error or answer.body.decode(errors="replace")
    return upstream_failure("ollama", f"rejected the request (HTTP {status})", detail)
