"""JWT bearer tokens (pyjwt): HS256 with a shared secret, or RS256/ES256 with a PEM public key or a JWKS file.

`sub` is the user; `exp` and `nbf` are checked when present (`exp` is required), `iss` and `aud` when
configured. A `scope` claim (space-separated) or `scopes` list may grant `admin`.

A verified token is remembered until its `exp` (plus the leeway): streams re-check their token at every
message, and a token's verdict can only change with time (a JWT cannot be revoked), so a re-check is a
lookup and a clock reading, not a signature verification.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from service.auth.api_keys import KEY_PREFIX
from service.auth.principals import SCOPES, check_user_id
from service.domain import InvalidArgument, Principal, Unauthenticated

SYMMETRIC = ("HS256",)
REMEMBERED = 4096  # verified tokens kept (the least recently used are forgotten first)
ASYMMETRIC = ("RS256", "ES256")


class JwtVerifier:
    """Verifies JWTs against one kind of key: never both, so a public key can't be used as an HMAC secret."""

    def __init__(
        self,
        *,
        secret: str | None = None,
        public_key_pem: str | None = None,
        jwks_json: str | None = None,
        issuer: str = "",
        audience: str = "",
        leeway: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if sum(x is not None for x in (secret, public_key_pem, jwks_json)) != 1:
            raise ValueError("configure exactly one of a JWT secret, a public key or a JWKS file")
        self._keys: dict[str | None, Any] = {}
        if secret is not None:
            self._algorithms: tuple[str, ...] = SYMMETRIC
            self._keys[None] = secret
        elif public_key_pem is not None:
            self._algorithms = ASYMMETRIC
            self._keys[None] = load_pem_public_key(public_key_pem.encode())
        else:
            assert jwks_json is not None
            self._algorithms = ASYMMETRIC
            for key in jwt.PyJWKSet.from_json(jwks_json).keys:
                self._keys[key.key_id] = key.key
        self._issuer = issuer or None
        self._audience = audience or None
        self._leeway = leeway
        self._clock = clock
        # sha256(token) -> (principal, when it stops being valid): tokens may be kilobytes, digests are not.
        self._verified: OrderedDict[bytes, tuple[Principal, float]] = OrderedDict()

    @classmethod
    def from_files(
        cls,
        *,
        secret: str | None,
        public_key_file: Path | None,
        jwks_file: Path | None,
        issuer: str,
        audience: str,
        leeway: float,
    ) -> JwtVerifier | None:
        """None when no JWT key is configured (JWTs are then refused like any unknown token)."""
        if secret is None and public_key_file is None and jwks_file is None:
            return None
        return cls(
            secret=secret,
            public_key_pem=public_key_file.read_text() if public_key_file else None,
            jwks_json=jwks_file.read_text() if jwks_file else None,
            issuer=issuer,
            audience=audience,
            leeway=leeway,
        )

    def verify(self, token: str) -> Principal:
        digest = hashlib.sha256(token.encode()).digest()
        known = self._verified.get(digest)
        if known is not None:
            principal, until = known
            if self._clock() < until:
                self._verified.move_to_end(digest)
                return principal
            del self._verified[digest]
            raise Unauthenticated("the bearer token is not a valid JWT")
        principal, expires = self._decode(token)
        principal = dataclasses.replace(principal, valid_until=expires + self._leeway)
        self._verified[digest] = (principal, expires + self._leeway)
        if len(self._verified) > REMEMBERED:
            self._verified.popitem(last=False)
        return principal

    def _decode(self, token: str) -> tuple[Principal, float]:
        """The token's principal and `exp`, verified against the key, the clock and the configured claims."""
        try:
            claims = jwt.decode(
                token,
                self._key_for(token),
                algorithms=list(self._algorithms),
                issuer=self._issuer,
                audience=self._audience,
                leeway=self._leeway,
                options={"require": ["exp", "sub"], "verify_aud": self._audience is not None},
            )
            expires = float(claims["exp"])
        except (jwt.PyJWTError, ValueError, TypeError):
            # The reason (expired, wrong audience, bad signature) is not told to an unauthenticated caller.
            raise Unauthenticated("the bearer token is not a valid JWT") from None
        try:
            user_id = check_user_id(str(claims["sub"]))
        except InvalidArgument:
            raise Unauthenticated("the JWT's `sub` is not a valid user id") from None
        return Principal(user_id, _scopes(claims)), expires

    def _key_for(self, token: str) -> Any:
        if len(self._keys) == 1:
            return next(iter(self._keys.values()))
        kid = jwt.get_unverified_header(token).get("kid")
        if kid not in self._keys:
            raise jwt.InvalidKeyError("unknown kid")
        return self._keys[kid]


def _scopes(claims: Mapping[str, Any]) -> frozenset[str]:
    raw = claims.get("scope", claims.get("scopes", ()))
    names = raw.split() if isinstance(raw, str) else [str(s) for s in raw] if isinstance(raw, list) else []
    return frozenset(names) & SCOPES


def authenticator(
    api_keys: Callable[[str], Awaitable[Principal]], jwts: JwtVerifier | None
) -> Callable[[str], Awaitable[Principal]]:
    """One bearer-token check: `csk_...` tokens are API keys, anything else a JWT (when configured)."""

    async def authenticate(token: str) -> Principal:
        if token.startswith(KEY_PREFIX + "_") or jwts is None:
            return await api_keys(token)
        return jwts.verify(token)

    return authenticate
