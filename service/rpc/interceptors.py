"""Server interceptors. Their order is one list in the composition root: access log -> auth -> errors."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc

from service.domain import DomainError, Principal, Unauthenticated
from service.rpc import errors
from service.rpc.context import principal_var
from service.rpc.handlers import Context, Handler, StreamBehavior, UnaryBehavior, wrap

logger = logging.getLogger("service.access")

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable["Handler | None"]]
PUBLIC_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def _metadata(details: grpc.HandlerCallDetails, key: str) -> str:
    for name, value in details.invocation_metadata or ():
        if name == key:
            return value if isinstance(value, str) else value.decode()
    return ""


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps exceptions raised by servicers (also mid-stream) to statuses through `errors`."""

    async def intercept_service(self, continuation: Continuation, details: grpc.HandlerCallDetails) -> Handler | None:
        handler = await continuation(details)
        return wrap(handler, _map_unary, _map_stream) if handler else None


def _map_unary(behavior: UnaryBehavior) -> UnaryBehavior:
    async def mapped(request: Any, context: Context) -> Any:
        try:
            return await behavior(request, context)
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as error:
            await errors.abort(context, error)

    return mapped


def _map_stream(behavior: StreamBehavior) -> StreamBehavior:
    async def mapped(request: Any, context: Context) -> AsyncIterator[Any]:
        try:
            async for response in behavior(request, context):
                yield response
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as error:
            await errors.abort(context, error)

    return mapped


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Resolves `authorization: Bearer <token>` to a Principal in a contextvar; health and reflection are open."""

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
            principal = await self._authenticate(_bearer(_metadata(details, "authorization")))
        except DomainError as error:
            handler = await continuation(details)
            return _refusing(handler, error) if handler else None
        principal_var.set(principal)
        return await continuation(details)


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
    """One structured line per RPC: method, user, status code, duration, request id. Never content."""

    async def intercept_service(self, continuation: Continuation, details: grpc.HandlerCallDetails) -> Handler | None:
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method
        request_id = _metadata(details, "x-request-id")

        def log(context: Context, started: float, peer: str, error: BaseException | None) -> None:
            # code() is None when the handler returned normally (OK); a bare exception means cancellation.
            code: Any = context.code()
            if code is None:
                code = grpc.StatusCode.CANCELLED if error else grpc.StatusCode.OK
            principal = principal_var.get()
            logger.info(
                "rpc",
                extra={
                    "method": method,
                    "user": principal.user_id if principal else None,
                    "code": code.name if isinstance(code, grpc.StatusCode) else str(code),
                    "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                    "peer": peer,
                    "request_id": request_id or None,
                },
            )

        def unary(behavior: UnaryBehavior) -> UnaryBehavior:
            async def logged(request: Any, context: Context) -> Any:
                # The peer is read while the call is alive: context.peer() on a call the client has
                # already abandoned can crash grpc's C core.
                started, peer, error = time.perf_counter(), context.peer(), None
                try:
                    return await behavior(request, context)
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    log(context, started, peer, error)

            return logged

        def stream(behavior: StreamBehavior) -> StreamBehavior:
            async def logged(request: Any, context: Context) -> AsyncIterator[Any]:
                started, peer, error = time.perf_counter(), context.peer(), None
                try:
                    async for response in behavior(request, context):
                        yield response
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    log(context, started, peer, error)

            return logged

        return wrap(handler, unary, stream)
