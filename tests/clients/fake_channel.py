"""ChatClient over grpcio-testing's fake channel: the test plays the server, one RPC at a time.

grpc_testing fakes a synchronous channel; `ThreadedStub` presents its stub with the grpc.aio call shapes
(awaitable unary calls, async-iterable streams) by running each blocking call on a worker thread."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc_testing

from chat.v1 import chat_pb2, chat_pb2_grpc

SERVICE = chat_pb2.DESCRIPTOR.services_by_name["ChatService"]
METHODS = SERVICE.methods_by_name
_END = object()


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
            return await asyncio.to_thread(method, request, **kwargs)

        return unary


async def _stream(method: Any, request: Any, kwargs: dict[str, Any]) -> AsyncIterator[Any]:
    responses = await asyncio.to_thread(method, request, **kwargs)
    while True:
        item = await asyncio.to_thread(next, responses, _END)
        if item is _END:
            return
        yield item
