"""LLM provider adapters behind `ports.Provider`, and the factory that picks one from the settings.

Adapters are imported inside `build_provider`, so choosing `ollama` never imports `llama_cpp` (and the
reverse). The small helpers below are shared by the adapters: how a provider's finish reason and error
text become domain values.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from service.domain import ChatTurn, FinishReason, ModelFailed, estimate_tokens

if TYPE_CHECKING:
    from service.ports import Provider
    from service.settings import Settings

_REASON_CHARS = 120


def build_provider(settings: Settings) -> Provider:
    """The provider `settings.llm_provider` names, configured from the settings."""
    if settings.llm_provider == "fake":
        from service.llm.fake import FakeProvider

        return FakeProvider(tokens_per_second=settings.fake_tokens_per_second, reply_tokens=settings.fake_reply_tokens)
    if settings.llm_provider == "ollama":
        from service.llm.ollama import OllamaProvider

        return OllamaProvider(
            settings.resolved_llm_url, timeout=settings.llm_timeout_seconds, max_streams=settings.llm_max_streams
        )
    if settings.llm_provider == "openai":
        from service.llm.openai import OpenAIProvider

        key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else None
        return OpenAIProvider(
            settings.resolved_llm_url,
            api_key=key,
            timeout=settings.llm_timeout_seconds,
            max_streams=settings.llm_max_streams,
            continues=settings.llm_continue,
        )
    from service.llm.local import LocalProvider

    return LocalProvider(
        settings.resolved_model,
        settings.local_model_path,
        context_tokens=settings.local_context_tokens,
        threads=settings.local_threads,
        prompt_format=settings.local_prompt_format,
        stall_seconds=settings.llm_timeout_seconds,
    )


def finish_reason(raw: str | None) -> FinishReason:
    """A provider's finish reason as ours; anything unknown (or missing) counts as a normal stop."""
    try:
        return FinishReason(raw or FinishReason.STOP)
    except ValueError:
        return FinishReason.STOP


def estimate_prompt_tokens(turns: Iterable[ChatTurn]) -> int:
    """Prompt size for backends that do not report it."""
    return sum(estimate_tokens(turn.content) for turn in turns)


def short_reason(text: str) -> str:
    """Upstream error text cut to one short line: enough to diagnose, never a whole body or trace."""
    line = text.strip().splitlines()[0] if text.strip() else "no reason given"
    return line if len(line) <= _REASON_CHARS else line[: _REASON_CHARS - 1] + "…"


def upstream_failure(provider: str, what: str, detail: str) -> ModelFailed:
    """A failure the caller may see (`what`), with the upstream's own words (`detail`) only in our log:
    they can name hosts, paths and internals that are not the caller's business."""
    logging.getLogger(f"service.llm.{provider}").warning("%s server %s: %s", provider, what, short_reason(detail))
    return ModelFailed(f"the model provider {what}")
