"""Opaque, validated page tokens (AIP-158) over the storage's keyset cursors."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from service.domain import InvalidArgument, Page

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
_TAG_BYTES = 16
_OFFSET = re.compile(r"[0-9]{1,9}")


def page_size(value: int) -> int:
    """AIP-158: 0 means the default, above the maximum is coerced, negative is an error."""
    if value < 0:
        raise InvalidArgument.field("page_size", "must not be negative")
    return min(value or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


class PageTokens:
    """Tokens carry a storage cursor and a MAC binding it to one listing (caller + parent).

    A token from another listing, another user, or edited by hand is INVALID_ARGUMENT. Tokens grant nothing:
    every listing still filters by the caller, so even a forged token cannot reach another user's data.
    The key may be given after construction (it is read from the database at start-up) but before any use.
    """

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret

    def key(self, secret: bytes) -> None:
        self._secret = secret

    def encode(self, scope: str, cursor: str | None) -> str:
        if cursor is None:
            return ""
        raw = cursor.encode()
        return base64.urlsafe_b64encode(self._tag(scope, raw) + raw).decode().rstrip("=")

    def decode(self, scope: str, token: str) -> str | None:
        if not token:
            return None
        try:
            blob = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            tag, raw = blob[:_TAG_BYTES], blob[_TAG_BYTES:]
            if len(tag) == _TAG_BYTES and hmac.compare_digest(tag, self._tag(scope, raw)):
                return raw.decode()
        except (ValueError, UnicodeDecodeError):
            pass
        raise _not_ours()

    def offset(self, scope: str, token: str) -> int:
        """The position a token of an in-memory listing carries (0 without one)."""
        cursor = self.decode(scope, token)
        if cursor is None:
            return 0
        if not _OFFSET.fullmatch(cursor):
            raise _not_ours()
        return int(cursor)

    def request(self, scope: str, size: int, token: str) -> PageRequest:
        """The steps every listing over the storage starts with: the page size checked (before the token), the
        token read back into the storage's cursor for `scope`."""
        limit = page_size(size)
        return PageRequest(self, scope, limit, self.decode(scope, token))

    def slice(self, scope: str, items: Sequence[T], size: int, token: str) -> Page[T]:
        """A page of an in-memory listing (models, personas): its token carries the position."""
        limit = page_size(size)
        start = self.offset(scope, token)
        following = start + limit
        cursor = str(following) if following < len(items) else None
        return Page(items[start:following], self.encode(scope, cursor))

    def _tag(self, scope: str, raw: bytes) -> bytes:
        if self._secret is None:
            raise RuntimeError("page tokens are used before their key is set")
        return hmac.new(self._secret, scope.encode() + b"\x00" + raw, hashlib.sha256).digest()[:_TAG_BYTES]


@dataclass(frozen=True, slots=True)
class PageRequest:
    """One listing's page as asked for: at most `limit` items after the storage cursor `after`."""

    tokens: PageTokens
    scope: str
    limit: int
    after: str | None

    def page(self, items: Sequence[T], cursor: str | None) -> Page[T]:
        """The page of `items`, its token leading to `cursor` (none after the last page)."""
        return Page(items, self.tokens.encode(self.scope, cursor))


def _not_ours() -> InvalidArgument:
    return InvalidArgument.field("page_token", "is not a page token issued for this listing")
