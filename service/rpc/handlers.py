"""Wrapping RPC method handlers while keeping their shape (unary or streaming, request and response)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias, cast

import grpc

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"  # generic only in the type stubs
UnaryBehavior = Callable[[Any, Context], Awaitable[Any]]
StreamBehavior = Callable[[Any, Context], AsyncIterator[Any]]
UnaryWrapper = Callable[[UnaryBehavior], UnaryBehavior]
StreamWrapper = Callable[[StreamBehavior], StreamBehavior]


def wrap(handler: Handler, unary: UnaryWrapper, stream: StreamWrapper) -> Handler:
    """A handler of the same kind whose behaviour is wrapped: `unary` for single responses, `stream` for
    streamed ones (whose behaviours are async generators)."""
    codec = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    # grpc's stubs type behaviours as the sync API's; on an aio server they are coroutines/async generators.
    if handler.unary_unary:
        wrapped: Any = unary(cast(UnaryBehavior, handler.unary_unary))
        return grpc.unary_unary_rpc_method_handler(wrapped, **codec)
    if handler.stream_unary:
        wrapped = unary(cast(UnaryBehavior, handler.stream_unary))
        return grpc.stream_unary_rpc_method_handler(wrapped, **codec)
    if handler.unary_stream:
        wrapped = stream(cast(StreamBehavior, handler.unary_stream))
        return grpc.unary_stream_rpc_method_handler(wrapped, **codec)
    if handler.stream_stream:
        wrapped = stream(cast(StreamBehavior, handler.stream_stream))
        return grpc.stream_stream_rpc_method_handler(wrapped, **codec)
    raise ValueError("a method handler has one behaviour")
