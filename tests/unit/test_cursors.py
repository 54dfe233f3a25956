"""Keyset cursors read back strictly: everything the storage writes is read back as written, and anything
else is INVALID_ARGUMENT page_token (never a value a query would fail on)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.domain import InvalidArgument
from service.pagination import PageTokens
from service.storage import cursors

BIGINT_MAX = 2**63 - 1


@given(
    when=st.datetimes(timezones=st.just(UTC)),
    conversation_id=st.uuids().map(str),
    score=st.floats(min_value=0, allow_nan=False, allow_infinity=False),
    position=st.integers(0, 10**18 - 1),
)
def test_what_storage_writes_reads_back(when: datetime, conversation_id: str, score: float, position: int) -> None:
    assert cursors.read_activity(cursors.activity(when, conversation_id)) == (when, conversation_id)
    assert cursors.read_relevance(cursors.relevance(score, position)) == (score, position)
    assert cursors.seq(str(position)) == position
    key_id = uuid.uuid4().hex[:16]
    assert cursors.key_id(key_id) == key_id


def _read(read: Callable[[str], object], cursor: str) -> object:
    try:
        return read(cursor)
    except InvalidArgument as error:
        return error


@given(st.text(max_size=80))
def test_anything_else_is_invalid_or_in_range(cursor: str) -> None:
    for read in (cursors.seq, cursors.read_activity, cursors.read_relevance, cursors.key_id):
        value = _read(read, cursor)
        if isinstance(value, InvalidArgument):
            assert [v.field for v in value.violations] == ["page_token"]
            continue
        for part in value if isinstance(value, tuple) else (value,):
            if isinstance(part, int):
                assert 0 <= part <= BIGINT_MAX
            if isinstance(part, datetime):
                assert part.tzinfo is not None


def test_an_offset_is_a_small_number() -> None:
    tokens = PageTokens(b"secret")
    assert tokens.offset("models", "") == 0
    assert tokens.offset("models", tokens.encode("models", "20")) == 20
    for cursor in ("", "x", "-1", "1_0", "\u0661", "9" * 10):
        with pytest.raises(InvalidArgument):
            tokens.offset("models", tokens.encode("models", cursor))


def test_tokens_cannot_be_used_before_their_key_is_set() -> None:
    tokens = PageTokens()
    with pytest.raises(RuntimeError):
        tokens.encode("models", "1")
    tokens.key(b"secret")
    assert tokens.decode("models", tokens.encode("models", "1")) == "1"
