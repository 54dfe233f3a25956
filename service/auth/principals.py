"""Who a caller is, whichever credential says so (an API key or a JWT): user ids, scopes, the admin check."""

from __future__ import annotations

from service.domain import InvalidArgument, PermissionDenied, Principal

USER_ID_MAX = 128
SCOPES = frozenset({"admin"})


def check_user_id(user_id: str) -> str:
    if not user_id or len(user_id) > USER_ID_MAX or not user_id.isprintable() or user_id != user_id.strip():
        raise InvalidArgument.field("user_id", f"must be 1-{USER_ID_MAX} printable characters")
    return user_id


def require_admin(principal: Principal) -> Principal:
    if not principal.is_admin:
        raise PermissionDenied("this method needs the admin scope")
    return principal
