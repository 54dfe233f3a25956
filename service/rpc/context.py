"""Request-scoped data, carried in contextvars from the interceptors to the servicers."""

from __future__ import annotations

from contextvars import ContextVar

from service.domain import Principal, Unauthenticated

principal_var: ContextVar[Principal | None] = ContextVar("principal", default=None)


def current_principal() -> Principal:
    principal = principal_var.get()
    if principal is None:  # only reachable if a method was left out of the auth interceptor's reach
        raise Unauthenticated("authentication required")
    return principal
