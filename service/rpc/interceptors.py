"""Server interceptors. Their order is one list in the composition root:
tracing -> access log -> auth -> rate limit -> errors."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, cast

import grpc
from opentelemetry import trace

from service.domain import DomainError, InvalidArgument, Principal, ResourceExhausted, Unauthenticated
from service.limits import RateLimiter
from service.rpc import errors
from service.rpc.context import principal_var
from service.rpc.handlers import Context, Handler, StreamBehavior, UnaryBehavior, Undecodable, tolerant, wrap
from service.telemetry import Metrics

logger = logging.getLogger("service.access")

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable["Handler | None"]]
PUBLIC_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def _metadata(details: grpc.HandlerCallDetails, key: str) -> str:
    for name, value in details.invocation_metadata or ():
        if name == key:
            return value if isinstance(value, str) else value.decode()
    return ""


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps exceptions raised by servicers (also mid-stream) to statuses through `errors`, and requests that
    cannot be parsed (also mid-stream) to INVALID_ARGUMENT. Innermost, so those reach the outer interceptors
    as requests: they are authenticated and logged first."""

    async def intercept_service(self, continuation: Continuation, details: grpc.HandlerCallDetails) -> Handler | None:
        handler = await continuation(details)
        if handler is None:
            return None
        parsed = _parsed_stream if handler.request_streaming else _parsed
        return wrap(
            handler,
            lambda behavior: _map_unary(behavior, parsed),
            lambda behavior: _map_stream(behavior, parsed),
            request_deserializer=tolerant(handler.request_deserializer),
        )


def _parsed(request: Any) -> Any:
    if isinstance(request, Undecodable):
        raise InvalidArgument.field("request", f"is not a valid {request.message_type} (its bytes do not parse)")
    return request


async def _parsed_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        yield _parsed(request)


def _map_unary(behavior: UnaryBehavior, parsed: Callable[[Any], Any]) -> UnaryBehavior:
    async def mapped(request: Any, context: Context) -> Any:
        try:
            return await behavior(parsed(request), context)
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as error:
            await errors.abort(context, error)

    return mapped


def _map_stream(behavior: StreamBehavior, parsed: Callable[[Any], Any]) -> StreamBehavior:
    async def mapped(request: Any, context: Context) -> AsyncIterator[Any]:
        try:
            async for response in behavior(parsed(request), context):
                yield response
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as error:
            await errors.abort(context, error)

    return mapped


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Resolves `authorization: Bearer <token>` to a Principal in a contextvar; health and reflection are open.

    A stream is authorised per message, not once per call: each message the client sends on it (a Coach
    turn or end) and each response the server streams first re-checks the token, so a revoked key or an
    expired JWT ends the stream UNAUTHENTICATED at its next message either way. The checks are cache
    lookups (a key's verification is cached and dropped on revocation; a JWT's until its `exp`)."""

    def __init__(
        self,
        authenticate: Callable[[str], Awaitable[Principal]],
        public_prefixes: Sequence[str] = PUBLIC_METHOD_PREFIXES,
    ) -> None:
        self._authenticate = authenticate
        self._public = tuple(public_prefixes)

    async def intercept_service(self, continuation: Continuation, details: grpc.HandlerCallDetails) -> Handler | None:
        if details.method.startswith(self._public):
            return await continuation(details)
        try:
            token = _bearer(_metadata(details, "authorization"))
            principal = await self._authenticate(token)
        except DomainError as error:
            handler = await continuation(details)
            return _refusing(handler, error) if handler else None
        principal_var.set(principal)
        handler = await continuation(details)
        if handler is None or handler.unary_unary:
            return handler
        return _per_message(handler, lambda: self._authenticate(token))


def _per_message(handler: Handler, check: Callable[[], Awaitable[object]]) -> Handler:
    """`handler`, calling `check` before each message the client streams and each response it streams."""

    def unary(behavior: UnaryBehavior) -> UnaryBehavior:  # client streaming, one response
        async def checked(requests: Any, context: Context) -> Any:
            return await behavior(_each_checked(requests, check), context)

        return checked

    def stream(behavior: StreamBehavior) -> StreamBehavior:
        async def checked(request: Any, context: Context) -> AsyncIterator[Any]:
            if handler.stream_stream:
                request = _each_checked(request, check)
            responses = behavior(request, context)  # an async generator (see handlers.wrap): closed on abort
            async with contextlib.aclosing(cast(AsyncGenerator[Any, None], responses)):
                async for response in responses:
                    try:
                        await check()
                    except DomainError as error:
                        await errors.abort(context, error)
                    yield response

        return checked

    return wrap(handler, unary, stream)


async def _each_checked(requests: AsyncIterator[Any], check: Callable[[], Awaitable[object]]) -> AsyncIterator[Any]:
    # Raised where the servicer reads the message: the error interceptor maps it like any other failure.
    async for request in requests:
        await check()
        yield request


def _bearer(header: str) -> str:
    scheme, _, token = header.partition(" ")
    if not header:
        raise Unauthenticated("missing 'authorization: Bearer <token>' metadata")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("the authorization metadata must be 'Bearer <token>'")
    return token.strip()


def _refusing(handler: Handler, error: DomainError) -> Handler:
    async def refuse_unary(request: Any, context: Context) -> Any:
        await errors.abort(context, error)

    async def refuse_stream(request: Any, context: Context) -> AsyncIterator[Any]:
        # An async generator, like the behaviour it replaces; it aborts before its first response.
        for _ in ():
            yield
        await errors.abort(context, error)

    return wrap(handler, lambda _: refuse_unary, lambda _: refuse_stream)


class AccessLogInterceptor(grpc.aio.ServerInterceptor):
    """One structured line per RPC (method, user, peer, status code, duration, bytes, request id, trace and
    span ids), and the RPC latency and active-stream metrics. Never content or credentials."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def intercept_service(self, continuation: Continuation, details: grpc.HandlerCallDetails) -> Handler | None:
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method
        request_id = _metadata(details, "x-request-id")
        metrics = self._metrics

        def log(context: Context, peer: str, started: float, error: BaseException | None, size: int) -> None:
            # code() is None when the handler returned normally (OK); a bare exception means cancellation.
            code: Any = context.code()
            if code is None:
                code = grpc.StatusCode.CANCELLED if error else grpc.StatusCode.OK
            code_name = code.name if isinstance(code, grpc.StatusCode) else str(code)
            seconds = time.perf_counter() - started
            principal = principal_var.get()
            span = trace.get_current_span().get_span_context()
            metrics.rpc_duration.record(seconds, {"rpc.method": method, "rpc.grpc.status_code": code_name})
            logger.info(
                "rpc",
                extra={
                    "method": method,
                    "user": principal.user_id if principal else None,
                    "code": code_name,
                    "duration_ms": round(seconds * 1000, 3),
                    "bytes": size,
                    "peer": peer,
                    "request_id": request_id or None,
                    "trace_id": trace.format_trace_id(span.trace_id) if span.is_valid else None,
                    "span_id": trace.format_span_id(span.span_id) if span.is_valid else None,
                },
            )

        def unary(behavior: UnaryBehavior) -> UnaryBehavior:
            async def logged(request: Any, context: Context) -> Any:
                # The peer is read first: asking a call that has ended for its peer can crash grpc's core.
                peer, started, error, size = context.peer(), time.perf_counter(), None, _size(request)
                try:
                    response = await behavior(request, context)
                    size += _size(response)
                    return response
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    log(context, peer, started, error, size)

            return logged

        def stream(behavior: StreamBehavior) -> StreamBehavior:
            async def logged(request: Any, context: Context) -> AsyncIterator[Any]:
                peer, started, error, size = context.peer(), time.perf_counter(), None, _size(request)
                metrics.active_streams.add(1, {"rpc.method": method})
                try:
                    async for response in behavior(request, context):
                        size += _size(response)
                        yield response
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    metrics.active_streams.add(-1, {"rpc.method": method})
                    log(context, peer, started, error, size)

            return logged

        return wrap(handler, unary, stream)


def _size(message: Any) -> int:
    """Serialized size of a protobuf message; 0 for request streams."""
    byte_size = getattr(message, "ByteSize", None)
    return int(byte_size()) if byte_size is not None else 0


class RateLimitInterceptor(grpc.aio.ServerInterceptor):
    """Per-user request rate and concurrent streams (after auth, so the user is known): RESOURCE_EXHAUSTED
    with a RetryInfo detail when over. Unauthenticated (public) methods are not limited.

    A call is one request; so is each further message a client streams on it (a Coach turn or end): over
    the limit, the stream ends RESOURCE_EXHAUSTED at that message, which is not taken."""

    def __init__(self, limiter: RateLimiter, metrics: Metrics) -> None:
        self._limiter = limiter
        self._metrics = metrics

    async def intercept_service(self, continuation: Continuation, details: grpc.HandlerCallDetails) -> Handler | None:
        handler = await continuation(details)
        principal = principal_var.get()
        if handler is None or principal is None:
            return handler
        user, limiter, rejections = principal.user_id, self._limiter, self._metrics.rate_limit_rejections

        def take() -> None:
            try:
                limiter.check_request(user)
            except ResourceExhausted:
                rejections.add(1, {"chat.limit": "requests"})
                raise

        try:
            take()
        except ResourceExhausted as error:
            return _refusing(handler, error)
        if handler.unary_unary:
            return handler

        def unary(behavior: UnaryBehavior) -> UnaryBehavior:  # client streaming, one response
            async def limited(requests: Any, context: Context) -> Any:
                return await behavior(_each_after_the_first(requests, take), context)

            return limited

        def stream(behavior: StreamBehavior) -> StreamBehavior:
            async def limited(request: Any, context: Context) -> AsyncIterator[Any]:
                try:
                    limiter.open_stream(user)
                except ResourceExhausted as error:
                    rejections.add(1, {"chat.limit": "streams"})
                    await errors.abort(context, error)
                if handler.stream_stream:
                    request = _each_after_the_first(request, take)
                try:
                    async for response in behavior(request, context):
                        yield response
                finally:
                    limiter.close_stream(user)

            return limited

        return wrap(handler, unary, stream)


async def _each_after_the_first(requests: AsyncIterator[Any], take: Callable[[], None]) -> AsyncIterator[Any]:
    """The client's messages, taking a request for each but the first (the call's own request took it)."""
    first = True
    async for request in requests:
        if not first:
            take()  # raised where the servicer reads the message: mapped by the error interceptor
        first = False
        yield request
