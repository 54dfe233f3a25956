"""Wrapping RPC method handlers while keeping their shape (unary or streaming, request and response)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

UnaryBehavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
StreamBehavior = Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]
UnaryWrapper = Callable[[UnaryBehavior], UnaryBehavior]
StreamWrapper = Callable[[StreamBehavior], StreamBehavior]


def wrap(handler: grpc.RpcMethodHandler, unary: UnaryWrapper, stream: StreamWrapper) -> grpc.RpcMethodHandler:
    """A handler of the same kind whose behaviour is wrapped: `unary` for single responses, `stream` for
    streamed ones (whose behaviours are async generators)."""
    codec = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **codec)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), **codec)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(stream(handler.unary_stream), **codec)
    if handler.stream_stream:
        return grpc.stream_stream_rpc_method_handler(stream(handler.stream_stream), **codec)
    raise ValueError("a method handler has one behaviour")
