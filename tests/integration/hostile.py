"""Machinery for the hostile-input tests: a model provider that cannot list its models, the server's access
log as the tests see it, an event loop that synchronous hypothesis tests can drive, and the size of a status
as it travels back to the client."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Coroutine, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf.descriptor import MethodDescriptor

from service.domain import ModelInfo, ModelUnavailable
from service.llm.fake import FakeProvider

T = TypeVar("T")
Metadata = Sequence[tuple[str, str]]
# Client default for received metadata (grpc.max_metadata_size); over it the call fails RESOURCE_EXHAUSTED.
CLIENT_METADATA_LIMIT = 8 * 1024
ACCESS_LOGGER = "service.access"


class UnlistedProvider(FakeProvider):
    """The fake model, up for replies but unable to list its models (like an Ollama whose /api/tags fails):
    the service then accepts any model name for a conversation."""

    async def list_models(self) -> Sequence[ModelInfo]:
        raise ModelUnavailable("the model list is unavailable")


@dataclass(frozen=True)
class Entry:
    method: str
    code: str
    user: str | None


class AccessLog(logging.Handler):
    """Every line of the `service.access` log, as (method, code, user); waits are bounded and event-driven."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.entries: list[Entry] = []
        self._changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() != "rpc":
            return
        fields = record.__dict__
        with self._changed:
            self.entries.append(Entry(str(fields.get("method")), str(fields.get("code")), fields.get("user")))
            self._changed.notify_all()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Entry]:
        """The entries, once there are at least `count` (from any thread)."""
        return self.wait_until(lambda entries: len(entries) >= count, f"{count} lines", timeout)

    def wait_until(self, done: Callable[[list[Entry]], bool], expected: str, timeout: float = 10.0) -> list[Entry]:
        """The entries, once `done` says they are all there (from any thread)."""
        with self._changed:
            if not self._changed.wait_for(lambda: done(self.entries), timeout):
                raise AssertionError(f"the access log has {self.entries}, expected {expected}")
            return list(self.entries)

    async def entry(self, index: int) -> Entry:
        """Entry number `index` (0-based), once logged; for tests on the server's own event loop."""
        return (await asyncio.to_thread(self.wait_for, index + 1))[index]


@contextlib.contextmanager
def access_log() -> Iterator[AccessLog]:
    """The access log captured for the duration of the block."""
    handler, logger = AccessLog(), logging.getLogger(ACCESS_LOGGER)
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


class LoopThread:
    """An event loop on a thread of its own, so hypothesis (synchronous) can drive an asyncio server."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def status_size(error: grpc.aio.AioRpcError) -> int:
    """Bytes of response metadata the status took on the wire: its message as grpc percent-encodes it (every
    byte outside printable ASCII, and `%`, takes three) and its trailers (binary ones in base64)."""
    message = (error.details() or "").encode()
    encoded = sum(1 if 0x20 <= byte <= 0x7E and byte != 0x25 else 3 for byte in message)
    trailers = 0
    for key, value in error.trailing_metadata() or ():
        size = len(value)
        trailers += len(key) + (4 * -(-size // 3) if key.endswith("-bin") else size)
    return encoded + trailers


# grpcio's aio client replaces the server's status with this when a request write loses the race with the end
# of the call (grpc/grpc#36066): never sent by the server, so the server's own access log is checked as well.
CLIENT_WRITE_RACE = (grpc.StatusCode.INTERNAL, "Internal error from Core")
CALL_TIMEOUT = 20.0  # seconds: a call that has not ended by then is a hang (DEADLINE_EXCEEDED fails the test)


def raw(data: bytes) -> bytes:
    return data


async def send(
    channel: grpc.aio.Channel, method: MethodDescriptor, payloads: Sequence[bytes], metadata: Metadata
) -> tuple[grpc.StatusCode, str]:
    """Call `method` with request bytes as they are (all of them for a request stream, else the first), read
    every response, and return how the call ended."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    options: dict[str, Any] = {"metadata": metadata, "timeout": CALL_TIMEOUT}
    kind = (method.client_streaming, method.server_streaming)
    try:
        if kind == (False, False):
            await channel.unary_unary(path, raw, raw)(payloads[0], **options)
        elif kind == (False, True):
            async for _ in channel.unary_stream(path, raw, raw)(payloads[0], **options):
                pass
        elif kind == (True, False):
            await channel.stream_unary(path, raw, raw)(iter(payloads), **options)
        else:
            async for _ in channel.stream_stream(path, raw, raw)(iter(payloads), **options):
                pass
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""
