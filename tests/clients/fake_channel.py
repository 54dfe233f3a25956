"""ChatClient over grpcio-testing's fake channel: the test plays the server, one RPC at a time.

grpc_testing fakes a synchronous channel; `ThreadedStub` presents its stub with the grpc.aio call shapes
(awaitable unary calls, async-iterable streams) by running each blocking call on a worker thread."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc_testing

from chat.v1 import chat_pb2, chat_pb2_grpc

SERVICE = chat_pb2.DESCRIPTOR.services_by_name["ChatService"]
METHODS = SERVICE.methods_by_name
_END = object()
T = TypeVar("T")


async def in_thread(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking call on a daemon thread: if a test fails while one side still waits on the fake channel
    (which has no timeouts), the thread must not keep the event loop, or the process, from ending."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():
            outcome()

    def run() -> None:
        try:
            value = function(*args, **kwargs)
        except BaseException as error:
            caught = error
            with contextlib.suppress(RuntimeError):  # the loop may be gone
                loop.call_soon_threadsafe(settle, lambda: future.set_exception(caught))
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, lambda: future.set_result(value))

    threading.Thread(target=run, daemon=True).start()
    return await future


def fake_channel() -> Any:
    return grpc_testing.channel([SERVICE], grpc_testing.strict_real_time())


class ThreadedStub:
    def __init__(self, channel: Any) -> None:
        self._stub = chat_pb2_grpc.ChatServiceStub(channel)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._stub, name)
        if METHODS[name].server_streaming:
            return lambda request, **kwargs: _stream(method, request, kwargs)

        async def unary(request: Any, **kwargs: Any) -> Any:
            return await in_thread(method, request, **kwargs)

        return unary


async def _stream(method: Any, request: Any, kwargs: dict[str, Any]) -> AsyncIterator[Any]:
    responses = await in_thread(method, request, **kwargs)
    while True:
        item = await in_thread(next, responses, _END)
        if item is _END:
            return
        yield item
