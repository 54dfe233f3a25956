"""The Ollama adapter: `/api/chat` streaming and `/api/tags` through the official `ollama` client."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence

import httpx
import ollama

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

# What the client lets through: its own ResponseError (HTTP status, or status -1 for an `{"error": ..}`
# line mid-stream), httpx transport errors (streaming does not wrap them), the builtin ConnectionError
# (non-streaming calls wrap httpx.ConnectError in it), and ValueError for a line that is not valid JSON
# or does not fit the response model (pydantic's ValidationError is a ValueError).
_CLIENT_ERRORS = (ollama.ResponseError, httpx.HTTPError, ConnectionError, ValueError)


class OllamaProvider:
    """Implements `ports.Provider` for an Ollama server (`base_url` like `http://127.0.0.1:11434`)."""

    name = "ollama"

    def __init__(self, base_url: str, *, timeout: float) -> None:
        self._client = ollama.AsyncClient(host=base_url, timeout=httpx.Timeout(timeout))

    async def stream(self, prompt: Prompt) -> AsyncGenerator[str | Completion, None]:
        messages = [{"role": turn.role.value, "content": turn.content} for turn in prompt.turns]
        pieces = 0
        final: ollama.ChatResponse | None = None
        chunks: AsyncIterator[ollama.ChatResponse] | None = None
        try:
            chunks = await self._client.chat(
                model=prompt.model, messages=messages, stream=True, options={"num_predict": prompt.max_tokens}
            )
            async for chunk in chunks:
                if chunk.done:
                    final = chunk
                    break
                # Thinking models stream `message.thinking` with empty content: not part of the reply.
                if chunk.message.content:
                    pieces += 1
                    yield chunk.message.content
        except _CLIENT_ERRORS as exc:
            raise _translate(exc, prompt.model, started=pieces > 0) from exc
        finally:
            # The client's stream is a generator holding the HTTP response: close it now, not at GC time.
            if isinstance(chunks, AsyncGenerator):
                await chunks.aclose()
        if final is None:
            raise ModelFailed("the ollama server ended the reply before it was complete")
        yield _completion(final, prompt, pieces)

    async def list_models(self) -> Sequence[ModelInfo]:
        try:
            listing = await self._client.list()
        except _CLIENT_ERRORS as exc:
            raise _translate(exc, "", started=False) from exc
        return [_model_info(model) for model in listing.models if model.model]

    async def aclose(self) -> None:
        await self._client.close()  # type: ignore[no-untyped-call]  # the client leaves it unannotated


def _completion(final: ollama.ChatResponse, prompt: Prompt, pieces: int) -> Completion:
    prompt_tokens = final.prompt_eval_count
    completion_tokens = final.eval_count
    # Ollama may leave the counts out of its final chunk: estimate what is missing, and say so.
    usage = Usage(
        prompt_tokens=estimate_prompt_tokens(prompt.turns) if prompt_tokens is None else prompt_tokens,
        completion_tokens=pieces if completion_tokens is None else completion_tokens,
        estimated=prompt_tokens is None or completion_tokens is None,
    )
    return Completion(finish_reason(final.done_reason), usage)


def _model_info(model: ollama.ListResponse.Model) -> ModelInfo:
    info = ModelInfo(name=model.model or "", provider=OllamaProvider.name, size_bytes=int(model.size or 0))
    if model.details is None:
        return info
    return dataclasses.replace(
        info,
        family=model.details.family or "",
        parameter_size=model.details.parameter_size or "",
        quantization_level=model.details.quantization_level or "",
    )


def _translate(exc: Exception, model: str, *, started: bool) -> DomainError:
    """The domain error for a client error; `started` says whether reply text was already yielded."""
    if isinstance(exc, ollama.ResponseError):
        return _response_error(exc, model)
    if started:
        return ModelFailed("the connection to the ollama server broke while the reply was streaming")
    if isinstance(exc, ValueError):
        return ModelFailed("the ollama server sent a malformed reply")
    if isinstance(exc, httpx.TimeoutException):
        return ModelUnavailable("the ollama server did not answer in time")
    logger.warning("ollama server unreachable: %s", type(exc).__name__)
    return ModelUnavailable("the ollama server cannot be reached")


def _response_error(exc: ollama.ResponseError, model: str) -> DomainError:
    status = exc.status_code
    # Ollama says "model 'x' not found"; a bare 404 means the URL does not point at an Ollama API.
    if status == 404 and model and "model" in exc.error:
        return ModelNotFound(model)
    if status == -1:  # an `{"error": ..}` line after a 200: the generation itself failed
        return upstream_failure("ollama", "failed while generating the reply", exc.error)
    if status == 429 or status >= 500:
        return ModelUnavailable(f"the ollama server is unavailable (HTTP {status})")
    return upstream_failure("ollama", f"rejected the request (HTTP {status})", exc.error)
