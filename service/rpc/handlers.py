"""Wrapping RPC method handlers while keeping their shape (unary or streaming, request and response), and
requests that cannot be parsed."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeAlias, cast

import grpc
from google.protobuf.message import DecodeError

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"  # generic only in the type stubs
UnaryBehavior = Callable[[Any, Context], Awaitable[Any]]
StreamBehavior = Callable[[Any, Context], AsyncIterator[Any]]
UnaryWrapper = Callable[[UnaryBehavior], UnaryBehavior]
StreamWrapper = Callable[[StreamBehavior], StreamBehavior]


Deserializer = Callable[[bytes], Any]


@dataclass(frozen=True, slots=True)
class Undecodable:
    """A request whose bytes are not its message (not protobuf, or a string that is not UTF-8). grpc parses
    requests before any interceptor's behaviour runs and answers a parse error UNKNOWN itself, unlogged and
    before authentication; arriving as this instead, the request goes through every interceptor like any
    other, and the error interceptor refuses it."""

    message_type: str
    size: int

    def ByteSize(self) -> int:  # protobuf's name: the access log counts it like a message
        return self.size


def tolerant(deserializer: Deserializer | None) -> Deserializer | None:
    """`deserializer`, returning an Undecodable where it would raise DecodeError."""
    if deserializer is None:
        return None
    message_class = getattr(deserializer, "__self__", None)
    descriptor = getattr(message_class, "DESCRIPTOR", None)
    message_type = descriptor.full_name if descriptor is not None else "request message"

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError:
            return Undecodable(message_type, len(data))

    return deserialize


def wrap(
    handler: Handler,
    unary: UnaryWrapper,
    stream: StreamWrapper,
    *,
    request_deserializer: Deserializer | None = None,
) -> Handler:
    """A handler of the same kind whose behaviour is wrapped: `unary` for single responses, `stream` for
    streamed ones (whose behaviours are async generators); and with another request deserializer if given."""
    codec = {
        "request_deserializer": request_deserializer or handler.request_deserializer,
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
