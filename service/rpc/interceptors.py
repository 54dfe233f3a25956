"""What the service does around every call, in one interceptor: a call's messages pass through one wrapper
(one generator for a stream), not one per concern — per token of a streamed reply, each wrapper was an async
generator layer of its own.

The steps, in this order (the composition root hands in each step's collaborator):
1. tracing: a SERVER span continuing the caller's `traceparent` (service/rpc/tracing.py);
2. the access log: one JSON line per call and the RPC metrics, whatever happens below;
3. authentication: `authorization: Bearer <token>` to a Principal in a contextvar (health and reflection are
   open); on a stream, re-checked before each message either way (service/rpc/recheck.py);
4. rate limits: a request per call and per further client message; a slot per open stream;
5. requests that do not parse: INVALID_ARGUMENT (after authentication, and logged);
6. the error map: domain errors to statuses, anything else INTERNAL (service/rpc/errors.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import grpc
from opentelemetry import trace

from service.domain import InvalidArgument, Principal, ResourceExhausted, Unauthenticated
from service.ratelimit.limits import StreamSlot, UserLimits
from service.rpc import errors, tracing
from service.rpc.context import principal_var
from service.rpc.handlers import Context, Handler, StreamBehavior, UnaryBehavior, Undecodable, tolerant, wrap
from service.rpc.recheck import Recheck
from service.telemetry import Metrics

logger = logging.getLogger("service.access")

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable["Handler | None"]]
Authenticate = Callable[[str], Awaitable[Principal]]
PUBLIC_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


@dataclass(frozen=True, slots=True)
class Guards:
    """The collaborators of the steps: who authenticates, what limits, what counts revocations."""

    authenticate: Authenticate
    limiter: UserLimits
    revocations: Callable[[], int] = lambda: 0
    public_prefixes: Sequence[str] = PUBLIC_METHOD_PREFIXES


@dataclass(slots=True)
class _Call:
    """One call's bookkeeping, from its first step to its access-log line."""

    method: str
    request_id: str
    peer: str
    span: trace.Span
    started: float = field(default_factory=time.perf_counter)
    size: int = 0
    error: BaseException | None = None


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, guards: Guards, metrics: Metrics) -> None:
        self._guards = guards
        self._metrics = metrics

    async def intercept_service(self, continuation: Continuation, details: grpc.HandlerCallDetails) -> Handler | None:
        handler = await continuation(details)
        if handler is None:
            return None
        metadata = _metadata(details)
        public = details.method.startswith(tuple(self._guards.public_prefixes))
        steps = _Steps(self._guards, self._metrics, details.method, metadata, public=public)
        return wrap(
            handler,
            steps.unary(request_streaming=bool(handler.request_streaming)),
            steps.stream(request_streaming=bool(handler.request_streaming)),
            request_deserializer=tolerant(handler.request_deserializer),
        )


class _Steps:
    """The steps for one call, as the wrappers of its behaviour."""

    def __init__(
        self, guards: Guards, metrics: Metrics, method: str, metadata: dict[str, str], *, public: bool
    ) -> None:
        self._guards = guards
        self._metrics = metrics
        self._method = method
        self._metadata = metadata
        self._public = public

    # ------------------------------------------------------------------------------------------ shapes

    def unary(self, *, request_streaming: bool) -> Callable[[UnaryBehavior], UnaryBehavior]:
        def wrapped(behavior: UnaryBehavior) -> UnaryBehavior:
            async def call(request: Any, context: Context) -> Any:
                state = self._open(context, request)
                try:
                    recheck = await self._admit(state)
                    request = self._requests(request, recheck) if request_streaming else _parsed(request)
                    response = await behavior(request, context)
                    state.size += _size(response)
                    return response
                except (grpc.aio.AbortError, asyncio.CancelledError) as error:
                    state.error = error
                    raise
                except Exception as error:
                    state.error = error
                    await errors.abort(context, error)
                finally:
                    self._close(state, context)

            return call

        return wrapped

    def stream(self, *, request_streaming: bool) -> Callable[[StreamBehavior], StreamBehavior]:
        def wrapped(behavior: StreamBehavior) -> StreamBehavior:
            async def call(request: Any, context: Context) -> AsyncIterator[Any]:
                state = self._open(context, request)
                slot = None
                self._metrics.active_streams.add(1, {"rpc.method": self._method})
                try:
                    recheck = await self._admit(state)
                    slot = await self._open_stream()
                    request = self._requests(request, recheck) if request_streaming else _parsed(request)
                    responses = cast(AsyncGenerator[Any, None], behavior(request, context))
                    try:
                        async for response in responses:
                            if recheck is not None:
                                await recheck()
                            state.size += _size(response)
                            yield response
                    finally:
                        await responses.aclose()  # at once, not at garbage collection
                except (grpc.aio.AbortError, asyncio.CancelledError, GeneratorExit) as error:
                    state.error = error
                    raise
                except Exception as error:
                    state.error = error
                    await errors.abort(context, error)
                finally:
                    if slot is not None:
                        self._guards.limiter.close_stream(slot)
                    self._metrics.active_streams.add(-1, {"rpc.method": self._method})
                    self._close(state, context)

            return call

        return wrapped

    # ------------------------------------------------------------------------------------------ steps

    def _open(self, context: Context, request: Any) -> _Call:
        # The peer is read first: asking a call that has ended for its peer can crash grpc's core.
        peer = context.peer()
        span = tracing.start_server_span(self._method, self._metadata, peer)
        return _Call(self._method, self._metadata.get("x-request-id", ""), peer, span, size=_size(request))

    async def _admit(self, state: _Call) -> Recheck | None:
        """Authenticate and take a request from the caller's rate; the recheck for the call's later messages."""
        if self._public:
            return None
        token = _bearer(self._metadata.get("authorization", ""))
        principal = await self._guards.authenticate(token)
        principal_var.set(principal)
        await self._take(principal.user_id)
        return Recheck(self._guards.authenticate, token, principal, self._guards.revocations)

    async def _take(self, user: str) -> None:
        try:
            await self._guards.limiter.check_request(user)
        except ResourceExhausted:
            self._metrics.rate_limit_rejections.add(1, {"chat.limit": "requests"})
            raise

    async def _open_stream(self) -> StreamSlot | None:
        principal = principal_var.get()
        if principal is None:
            return None
        try:
            return await self._guards.limiter.open_stream(principal.user_id)
        except ResourceExhausted:
            self._metrics.rate_limit_rejections.add(1, {"chat.limit": "streams"})
            raise

    async def _requests(self, requests: AsyncIterator[Any], recheck: Recheck | None) -> AsyncIterator[Any]:
        """A client's stream of messages: each parsed, each after the first re-authorised and counted against the
        rate (raised where the servicer reads the message, so the error map answers it)."""
        first = True
        async for request in requests:
            if not first and recheck is not None:
                await recheck()
                await self._take(recheck.principal.user_id)
            first = False
            yield _parsed(request)

    def _close(self, state: _Call, context: Context) -> None:
        # code() is None when the handler returned normally (OK); a bare exception means cancellation.
        code: Any = context.code()
        if code is None:
            code = grpc.StatusCode.CANCELLED if state.error is not None else grpc.StatusCode.OK
        code_name = code.name if isinstance(code, grpc.StatusCode) else str(code)
        seconds = time.perf_counter() - state.started
        tracing.end_server_span(state.span, code)
        self._metrics.rpc_duration.record(seconds, {"rpc.method": self._method, "rpc.grpc.status_code": code_name})
        principal = principal_var.get()
        span = state.span.get_span_context()
        logger.info(
            "rpc",
            extra={
                "method": self._method,
                "user": principal.user_id if principal else None,
                "code": code_name,
                "duration_ms": round(seconds * 1000, 3),
                "bytes": state.size,
                "peer": state.peer,
                "request_id": state.request_id or None,
                "trace_id": trace.format_trace_id(span.trace_id) if span.is_valid else None,
                "span_id": trace.format_span_id(span.span_id) if span.is_valid else None,
            },
        )


def _metadata(details: grpc.HandlerCallDetails) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, value in details.invocation_metadata or ():
        if name not in found and not name.endswith("-bin"):
            found[name] = value if isinstance(value, str) else value.decode(errors="replace")
    return found


def _bearer(header: str) -> str:
    scheme, _, token = header.partition(" ")
    if not header:
        raise Unauthenticated("missing 'authorization: Bearer <token>' metadata")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("the authorization metadata must be 'Bearer <token>'")
    return token.strip()


def _parsed(request: Any) -> Any:
    if isinstance(request, Undecodable):
        raise InvalidArgument.field("request", f"is not a valid {request.message_type} (its bytes do not parse)")
    return request


def _size(message: Any) -> int:
    """Serialized size of a protobuf message; 0 for request streams."""
    byte_size = getattr(message, "ByteSize", None)
    return int(byte_size()) if byte_size is not None else 0
