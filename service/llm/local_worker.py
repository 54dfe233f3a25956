"""The model worker: llama.cpp in a process of its own, driven by the `local` adapter over its stdin/stdout.

Native code can crash (a segfault in a CPU kernel, an abort, the OOM killer): here it takes down this process
only, and the service ends the reply in flight FAILED and starts a new worker. Run as
`python -m service.llm.local_worker`; it imports nothing of the service but this package's stdlib-only
protocol, so a crash cannot corrupt the service's state.

Protocol: one JSON object per line. The first line in is the configuration (`path`, `context_tokens`,
`threads`, `prompt_format`, `seed`); the worker answers `{"ready": ...}` or `{"fatal": reason}` and exits.
Then, in: `{"op": "generate", "id", "turns": [[role, text], ...], "max_tokens"}` and `{"op": "stop", "id"}`;
out, per request: `{"id", "text"}` pieces, then `{"id", "done": {finish_reason, prompt_tokens,
completion_tokens}}` or `{"id", "error": reason, "kind": "too_long" | "failed"}`. Requests run one at a time,
in order; a stop reaches a request queued or running (it ends with `done`, finish reason "stop").
"""

from __future__ import annotations

import functools
import json
import os
import platform
import queue
import sys
import threading
from collections.abc import Callable, Iterator
from typing import IO, Any

# What the portable x86-64 build (deploy/llama-wheel.sh) needs: without these the first matrix product dies of
# SIGILL. Checked up front so the reason is a sentence, not a signal.
X86_64_FLAGS = ("avx", "avx2", "fma", "f16c", "bmi2")
DEFAULT_SYSTEM = "The following is a conversation between a user and a friendly, helpful assistant."
_SPEAKERS = {"user": "User", "assistant": "Assistant"}
# A base model continues a plain transcript; these stop it before it writes the next speaker's line.
TRANSCRIPT_STOP = ["\nUser:", "\nAssistant:", "\n\n"]


class TooLong(Exception):
    """The newest message alone does not fit the context window."""


def missing_cpu_features(cpuinfo: str, machine: str) -> list[str]:
    if machine not in ("x86_64", "AMD64"):
        return []
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return [flag for flag in X86_64_FLAGS if flag not in flags]


def transcript(turns: list[tuple[str, str]]) -> str:
    """The plain-text prompt a base model continues: a preamble, the dialogue, and an open reply line."""
    system = next((text for role, text in turns if role == "system"), DEFAULT_SYSTEM)
    lines = [f"{_SPEAKERS[role]}: {text}\n" for role, text in turns if role != "system"]
    return system + "\n\n" + "".join(lines) + "Assistant:"


class Engine:
    """One loaded model and how its prompts are written (a chat template, or a plain transcript)."""

    def __init__(self, config: dict[str, Any]) -> None:
        from llama_cpp import Llama

        seed = config.get("seed")
        self.llm = Llama(
            model_path=config["path"],
            n_ctx=config["context_tokens"],
            n_threads=config.get("threads") or None,
            seed=seed if seed is not None else 0xFFFFFFFF,  # llama.cpp's "random"
            verbose=False,
        )
        self.context_tokens: int = config["context_tokens"]
        template = self.llm.metadata.get("tokenizer.chat_template", "")
        fmt = config.get("prompt_format", "auto")
        self.chat = fmt == "chat" or (fmt == "auto" and bool(template))
        self._template = self._formatter(template) if self.chat else None

    def _formatter(self, template: str) -> Callable[[list[tuple[str, str]]], tuple[str, list[str]]]:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        llm = self.llm
        eos, bos = llm.token_eos(), llm.token_bos()
        formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=llm._model.token_get_text(eos) if eos != -1 else "",
            bos_token=llm._model.token_get_text(bos) if bos != -1 else "",
            stop_token_ids=[eos],
        )

        def render(turns: list[tuple[str, str]]) -> tuple[str, list[str]]:
            messages: Any = [{"role": role, "content": text} for role, text in turns]
            formatted = formatter(messages=messages)
            stop = formatted.stop if isinstance(formatted.stop, list) else [formatted.stop] if formatted.stop else []
            return formatted.prompt, stop

        return render

    def prompt(self, turns: list[tuple[str, str]], max_tokens: int) -> tuple[str, list[str], int]:
        """The prompt text, its stop strings and its token count, dropping the oldest turns until the reply fits
        (the history window upstream is sized by an estimate, which can be well off for some scripts)."""
        system = [turn for turn in turns if turn[0] == "system"][:1]
        history = [turn for turn in turns if turn[0] != "system"]
        while True:
            text, stop = self._render(system + history)
            count = len(self.llm.tokenize(text.encode("utf-8", "surrogatepass"), add_bos=not self.chat, special=True))
            if count + max_tokens <= self.context_tokens or len(history) <= 1:
                break
            history.pop(0)
        if count >= self.context_tokens:
            raise TooLong("the message is too long for the local model's context window")
        return text, stop, count

    def _render(self, turns: list[tuple[str, str]]) -> tuple[str, list[str]]:
        if self._template is not None:
            return self._template(turns)
        return transcript(turns), TRANSCRIPT_STOP

    def generate(self, job: dict[str, Any], stopped: Callable[[], bool]) -> Iterator[dict[str, Any]]:
        turns = [(role, text) for role, text in job["turns"]]
        text, stop, prompt_tokens = self.prompt(turns, job["max_tokens"])
        prefix = job.get("prefix", "")
        if prefix:  # continuing a partial reply: the model writes on from it
            text += prefix if self.chat else " " + prefix
        chunks: Any = self.llm.create_completion(
            text,
            max_tokens=job["max_tokens"],
            stop=stop,
            temperature=0.6 if not self.chat else 0.3,
            top_p=0.9,
            repeat_penalty=1.2 if not self.chat else 1.1,
            stream=True,
        )
        generated, reason, leading = 0, None, True
        try:
            for chunk in chunks:
                if stopped():
                    reason = "stop"
                    break
                choice = chunk["choices"][0]
                reason = choice["finish_reason"] or reason
                piece: str = choice["text"]
                generated += bool(piece)
                if leading and not prefix:  # a reply line opens with a space or a newline
                    piece = piece.lstrip()
                    leading = not piece
                if piece:
                    yield {"text": piece}
        finally:
            chunks.close()
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": generated}
        yield {"done": {"finish_reason": reason or "stop", **usage}}


class Worker:
    """Reads requests on a thread (so a stop reaches the request being generated) and runs them in order."""

    def __init__(self, engine: Engine, out: IO[str]) -> None:
        self._engine = engine
        self._out = out
        self._jobs: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._stopped: set[int] = set()
        self._lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        self._out.write(json.dumps(message) + "\n")
        self._out.flush()

    def read(self, source: IO[str]) -> None:
        for line in source:
            request = json.loads(line)
            if request["op"] == "stop":
                with self._lock:
                    self._stopped.add(request["id"])
            else:
                self._jobs.put(request)
        self._jobs.put(None)  # the service closed our stdin: exit

    def run(self) -> None:
        while (job := self._jobs.get()) is not None:
            ident: int = job["id"]
            try:
                for message in self._engine.generate(job, functools.partial(self._is_stopped, ident)):
                    self.send({"id": ident, **message})
            except TooLong as exc:
                self.send({"id": ident, "error": str(exc), "kind": "too_long"})
            except Exception as exc:  # reported to the service; the worker lives on for the next reply
                self.send({"id": ident, "error": f"{type(exc).__name__}: {exc}"[:300], "kind": "failed"})
            with self._lock:
                self._stopped.discard(ident)

    def _is_stopped(self, ident: int) -> bool:
        with self._lock:
            return ident in self._stopped


def _protocol_stdout() -> IO[str]:
    """Our own handle on stdout for the protocol; file descriptor 1 then points at stderr, so nothing native
    code prints can break a protocol line."""
    out = os.fdopen(os.dup(1), "w", encoding="utf-8", errors="surrogatepass")
    os.dup2(2, 1)
    return out


def main() -> int:
    out = _protocol_stdout()
    source = open(sys.stdin.fileno(), encoding="utf-8", errors="surrogatepass", closefd=False)  # noqa: SIM115
    config = json.loads(source.readline())
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            missing = missing_cpu_features(cpuinfo.read(), platform.machine())
    except OSError:
        missing = []
    if missing:
        reason = f"this CPU lacks {', '.join(missing)}, which the bundled llama.cpp build needs (deploy/llama-wheel.sh)"
        out.write(json.dumps({"fatal": reason}) + "\n")
        return 3
    try:
        engine = Engine(config)
    except ImportError:
        out.write(json.dumps({"fatal": "llama-cpp-python is not installed"}) + "\n")
        return 3
    except (ValueError, RuntimeError, OSError) as exc:
        out.write(json.dumps({"fatal": f"the model could not be loaded: {type(exc).__name__}"}) + "\n")
        return 3
    worker = Worker(engine, out)
    worker.send({"ready": {"chat_template": engine.chat, "pid": os.getpid()}})
    threading.Thread(target=worker.read, args=(source,), daemon=True, name="requests").start()
    worker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
