"""A long-lived stream's credential, re-checked before each of its later messages at the cost of a few
comparisons.

A revoked API key ends the stream at its next message: a revocation is announced to every replica and counted
(`ApiKeys.revocations`), and a stream whose count moved authenticates again. A JWT ends at its `exp` (plus the
configured leeway). Past these, the credential is authenticated again every `interval` seconds, which is what
ends a stream whose key was revoked while the replicas' notifications were down. A database that cannot be
reached then is not a reason to end a stream that was authorised: it goes on, and the next check tries again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from service.domain import Principal, Unauthenticated, Unavailable

logger = logging.getLogger(__name__)


class Recheck:
    __slots__ = ("_authenticate", "_due", "_interval", "_revocations", "_seen", "_token", "principal")

    def __init__(
        self,
        authenticate: Callable[[str], Awaitable[Principal]],
        token: str,
        principal: Principal,
        revocations: Callable[[], int],
        *,
        interval: float = 5.0,
    ) -> None:
        self._authenticate = authenticate
        self._token = token
        self.principal = principal
        self._revocations = revocations
        self._interval = interval
        self._seen = revocations()
        self._due = time.monotonic() + interval

    async def __call__(self) -> None:
        valid_until = self.principal.valid_until
        if valid_until is not None and time.time() >= valid_until:
            raise Unauthenticated("the bearer token has expired")
        if self._seen == self._revocations() and time.monotonic() < self._due:
            return
        self._seen = self._revocations()
        self._due = time.monotonic() + self._interval
        try:
            await self._authenticate(self._token)
        except Unavailable:
            logger.warning("could not re-check a stream's credential (the database is unavailable); going on")
