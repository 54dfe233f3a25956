"""API keys: minted with a secret shown once, stored as a hash, verified in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from service.auth.principals import SCOPES, check_user_id
from service.domain import ApiKey, InvalidArgument, NotFound, Page, Principal, Unauthenticated
from service.pagination import PageTokens
from service.ports import UnitOfWorkFactory

KEY_PREFIX = "csk"
# Notification channel announcing a revoked key id to every replica (see `ports.Notifications`).
REVOKED_CHANNEL = "chat_key_revoked"


def hash_secret(secret: str) -> str:
    # Secrets are 256 random bits: a fast hash is enough (no dictionary to guard against).
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_key(token: str) -> tuple[str, str] | None:
    """`csk_<id>_<secret>` -> (id, secret)."""
    prefix, _, rest = token.partition("_")
    key_id, _, secret = rest.partition("_")
    if prefix != KEY_PREFIX or not key_id or not secret:
        return None
    return key_id, secret


@dataclass(frozen=True, slots=True)
class _Verified:
    principal: Principal
    secret_hash: str
    until: float


class ApiKeys:
    """Create, list, revoke keys, and authenticate bearer tokens against them.

    Verified keys are cached for `cache_seconds` so a request costs no database read. A revocation is
    announced through `announce` (the replicas' notifications, which call `forget` everywhere), so it takes
    effect at once on every replica; while `cache_trusted()` is False (notifications from other replicas
    cannot arrive) the cache is bypassed.
    """

    def __init__(
        self,
        uow: UnitOfWorkFactory,
        tokens: PageTokens,
        *,
        clock: Callable[[], datetime],
        cache_seconds: float = 5.0,
        touch_every: timedelta = timedelta(minutes=1),
        announce: Callable[[str], None] = lambda key_id: None,
        cache_trusted: Callable[[], bool] = lambda: True,
    ) -> None:
        self._uow = uow
        self._tokens = tokens
        self._clock = clock
        self._cache_seconds = cache_seconds
        self._touch_every = touch_every
        self._cache: dict[str, _Verified] = {}
        self._announce = announce
        self._cache_trusted = cache_trusted
        self.revocations = 0  # revocations heard of (here or announced): a stream's credential is then re-checked

    async def create(self, user_id: str, *, scopes: Iterable[str] = (), name: str = "") -> tuple[ApiKey, str]:
        """Returns the stored key and its token; the token is never stored and cannot be shown again."""
        user_id = check_user_id(user_id)
        scopes = frozenset(scopes)
        if not scopes <= SCOPES:
            raise InvalidArgument.field("scopes", f"unknown scopes {sorted(scopes - SCOPES)}")
        if len(name) > 200 or "\x00" in name:
            raise InvalidArgument.field("name", "must be at most 200 characters, without NUL")
        key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        key = ApiKey(key_id, user_id, hash_secret(secret), scopes, self._clock(), name=name)
        async with self._uow() as uow:
            await uow.api_keys.add(key)
            await uow.commit()
        return key, f"{KEY_PREFIX}_{key_id}_{secret}"

    async def list(self, *, user_id: str | None, size: int, token: str) -> Page[ApiKey]:
        if user_id:
            check_user_id(user_id)
        request = self._tokens.request(f"api_keys:{user_id or '*'}", size, token)
        async with self._uow() as uow:
            rows = await uow.api_keys.list(user_id=user_id, limit=request.limit, after=request.after)
        return request.page(rows.items, rows.cursor)

    async def revoke(self, key_id: str) -> ApiKey:
        if not key_id:
            raise InvalidArgument.field("key_id", "is required")
        if len(key_id) > 32 or not key_id.isascii() or not key_id.isalnum():
            raise NotFound("API key not found", metadata={"keyId": key_id[:64]})
        async with self._uow() as uow:
            if not await uow.api_keys.revoke(key_id, self._clock()) and await uow.api_keys.get(key_id) is None:
                raise NotFound("API key not found", metadata={"keyId": key_id})
            key = await uow.api_keys.get(key_id)
            await uow.commit()
        self._cache.pop(key_id, None)
        self.revocations += 1
        self._announce(key_id)
        assert key is not None
        return key

    def forget(self, key_id: str) -> None:
        """Drop a cached verification (a revocation announced by another replica)."""
        self._cache.pop(key_id, None)
        self.revocations += 1

    async def authenticate(self, token: str) -> Principal:
        parsed = parse_key(token)
        if parsed is None:
            raise Unauthenticated("the bearer token is not a valid API key")
        key_id, secret = parsed
        secret_hash = hash_secret(secret)
        cached = self._cache.get(key_id)
        if cached is not None and cached.until > time.monotonic() and self._cache_trusted():
            if hmac.compare_digest(cached.secret_hash, secret_hash):
                return cached.principal
            raise Unauthenticated("the API key is not valid")
        return await self._verify(key_id, secret_hash)

    async def _verify(self, key_id: str, secret_hash: str) -> Principal:
        now = self._clock()
        async with self._uow() as uow:
            key = await uow.api_keys.get(key_id)
            valid = key is not None and key.revoke_time is None and hmac.compare_digest(key.secret_hash, secret_hash)
            if not valid or key is None:
                raise Unauthenticated("the API key is not valid")
            if key.last_used_time is None or now - key.last_used_time > self._touch_every:
                await uow.api_keys.touch(key_id, now)
                await uow.commit()
        principal = Principal(key.user_id, key.scopes)
        self._cache[key_id] = _Verified(principal, key.secret_hash, time.monotonic() + self._cache_seconds)
        return principal
