"""Keyset cursors: what a listing's page token carries, written here and read back strictly.

A cursor comes back from a caller inside a page token. Its MAC says the service issued it, but it is still
parsed as untrusted input: one that does not parse, or does not fit the columns it is compared with, is
INVALID_ARGUMENT page_token, never a failed query.
"""

from __future__ import annotations

import math
import re
import uuid
from datetime import UTC, datetime

from service.domain import InvalidArgument

_SEQ = re.compile(r"[0-9]{1,18}")  # fits a BIGINT
_KEY_ID = re.compile(r"[0-9A-Za-z]{1,32}")


def _malformed() -> InvalidArgument:
    return InvalidArgument.field("page_token", "is not a page token issued for this listing")


def seq(after: str) -> int:
    """A message's position (ListMessages)."""
    if not _SEQ.fullmatch(after):
        raise _malformed()
    return int(after)


def activity(update_time: datetime, conversation_id: str) -> str:
    return f"{update_time.isoformat()}|{conversation_id}"


def read_activity(after: str) -> tuple[datetime, str]:
    """A conversation's last activity and id (ListConversations)."""
    when, _, conversation_id = after.partition("|")
    try:
        moment = datetime.fromisoformat(when)
        canonical = str(uuid.UUID(conversation_id)) == conversation_id
        if moment.tzinfo is None or not canonical:
            raise ValueError(after)
        # As UTC, like the column; near year 1 or 9999 an offset can put it out of range (OverflowError).
        return moment.astimezone(UTC), conversation_id
    except (ValueError, OverflowError):
        raise _malformed() from None


def relevance(score: float, position: int) -> str:
    return f"{score!r}|{position}"


def read_relevance(after: str) -> tuple[float, int]:
    """A search hit's score and the message's position (SearchMessages)."""
    score, _, position = after.partition("|")
    try:
        value = float(score)
    except ValueError:
        raise _malformed() from None
    if not math.isfinite(value):
        raise _malformed()
    return value, seq(position)


def key_id(after: str) -> str:
    """An API key's id (ListApiKeys)."""
    if not _KEY_ID.fullmatch(after):
        raise _malformed()
    return after
