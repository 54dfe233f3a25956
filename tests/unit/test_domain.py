"""Pure rules of the domain: the history window and input validation."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.domain import (
    REQUEST_ID_MAX,
    ChatTurn,
    Conversation,
    InvalidArgument,
    Need,
    NotFound,
    PermissionDenied,
    Principal,
    Role,
    check_access,
    check_id,
    check_request_id,
    check_shared_access,
    check_text,
    history_window,
)


def turn(text: str, role: Role = Role.USER) -> ChatTurn:
    return ChatTurn(role, text)


def length(text: str) -> int:
    """A token count that is easy to reason about: one token per character."""
    return len(text)


def violated_field(error: pytest.ExceptionInfo[InvalidArgument]) -> str:
    (violation,) = error.value.violations
    return violation.field


# ---------------------------------------------------------------------------------------------- history_window


def test_history_window_keeps_system_turn_first_and_everything_that_fits() -> None:
    system = turn("sys", Role.SYSTEM)
    history = [turn("aa"), turn("bb", Role.ASSISTANT), turn("cc")]

    assert history_window(system, history, budget=100, count=length) == (system, *history)


def test_history_window_drops_the_oldest_messages_beyond_the_budget() -> None:
    history = [turn("a" * 5), turn("b" * 3), turn("c" * 4)]

    assert history_window(None, history, budget=8, count=length) == (history[1], history[2])


def test_history_window_counts_the_system_turn_against_the_budget() -> None:
    system = turn("s" * 4, Role.SYSTEM)
    history = [turn("b" * 3), turn("c" * 4)]

    assert history_window(system, history, budget=8, count=length) == (system, history[1])


def test_history_window_keeps_whole_messages_and_stops_at_the_first_that_does_not_fit() -> None:
    # "bbbbbb" does not fit; the older, smaller "a" must not be taken instead (the window is a suffix).
    history = [turn("a"), turn("b" * 6), turn("c" * 3)]

    assert history_window(None, history, budget=5, count=length) == (history[2],)


def test_history_window_always_keeps_the_newest_message_even_over_budget() -> None:
    system = turn("system prompt", Role.SYSTEM)
    history = [turn("old"), turn("x" * 50)]

    assert history_window(system, history, budget=10, count=length) == (system, history[1])


def test_history_window_of_empty_history_is_the_system_turn_alone() -> None:
    system = turn("sys", Role.SYSTEM)

    assert history_window(system, [], budget=10, count=length) == (system,)
    assert history_window(None, [], budget=10, count=length) == ()


def test_history_window_uses_the_default_token_estimate() -> None:
    history = [turn("x" * 400) for _ in range(10)]  # about 104 tokens each

    window = history_window(None, history, budget=300)

    assert window == tuple(history[-2:])


@given(
    system=st.none() | st.text(max_size=30).map(lambda t: turn(t, Role.SYSTEM)),
    history=st.lists(st.text(max_size=30).map(turn), max_size=12),
    budget=st.integers(min_value=0, max_value=200),
)
def test_history_window_is_a_suffix_within_budget_unless_only_the_newest(
    system: ChatTurn | None, history: list[ChatTurn], budget: int
) -> None:
    window = history_window(system, history, budget=budget, count=length)

    kept = list(window[1:] if system else window)
    if system:
        assert window[0] is system
    assert kept == history[len(history) - len(kept) :]
    assert bool(kept) == bool(history)
    cost = sum(len(t.content) for t in kept) + (len(system.content) if system else 0)
    assert cost <= budget or kept == history[-1:]
    if len(kept) < len(history):  # what was dropped really did not fit
        next_older = history[len(history) - len(kept) - 1]
        assert cost + len(next_older.content) > budget


# ---------------------------------------------------------------------------------------------- check_id


def test_check_id_returns_the_canonical_form_of_a_uuid() -> None:
    value = uuid.uuid4()

    assert check_id("conversation_id", str(value).upper()) == str(value)
    assert check_id("conversation_id", value.hex) == str(value)


@pytest.mark.parametrize("value", ["", "not-a-uuid", "1234", "g" * 32])
def test_check_id_rejects_missing_or_malformed_ids_naming_the_field(value: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        check_id("message_id", value)

    assert violated_field(error) == "message_id"


# ---------------------------------------------------------------------------------------------- check_text


@pytest.mark.parametrize("value", ["", " ", "\n\t  "])
def test_check_text_rejects_empty_or_whitespace_when_required(value: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        check_text("content", value, max_bytes=100, required=True)

    assert violated_field(error) == "content"


def test_check_text_accepts_empty_when_optional() -> None:
    assert check_text("system_prompt", "", max_bytes=100, required=False) == ""


def test_check_text_accepts_exactly_the_byte_limit_in_multibyte_characters() -> None:
    text = "é" * 5 + "🙂"  # 5 * 2 + 4 = 14 bytes, 6 characters

    assert check_text("content", text, max_bytes=14, required=True) == text


def test_check_text_rejects_one_byte_over_the_limit_counting_bytes_not_characters() -> None:
    text = "é" * 5 + "🙂"  # 14 bytes although only 6 characters

    with pytest.raises(InvalidArgument) as error:
        check_text("content", text, max_bytes=13, required=True)

    assert violated_field(error) == "content"
    assert "14 bytes" in error.value.message


def test_check_text_rejects_nul_characters() -> None:
    with pytest.raises(InvalidArgument) as error:
        check_text("content", "hello\x00world", max_bytes=100, required=True)

    assert violated_field(error) == "content"


def test_check_text_rejects_a_lone_nul_even_when_optional() -> None:
    with pytest.raises(InvalidArgument):
        check_text("system_prompt", "\x00", max_bytes=100, required=False)


# ---------------------------------------------------------------------------------------------- check_request_id


@pytest.mark.parametrize("value", ["", "abc-123", "x" * REQUEST_ID_MAX, "a b~!"])
def test_check_request_id_accepts_short_printable_ascii(value: str) -> None:
    assert check_request_id(value) == value


@pytest.mark.parametrize("value", ["x" * (REQUEST_ID_MAX + 1), "café", "tab\there", "new\nline", "nul\x00"])
def test_check_request_id_rejects_long_non_ascii_or_control_characters(value: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        check_request_id(value)

    assert violated_field(error) == "request_id"


# ---------------------------------------------------------------------------------------------- check_access


def conversation_of(owner: str) -> Conversation:
    when = datetime(2025, 1, 1, tzinfo=UTC)
    return Conversation(str(uuid.uuid4()), owner, "t", "m", "", "", when, when)


@pytest.mark.parametrize("need", list(Need))
def test_check_access_lets_the_owner_do_anything(need: Need) -> None:
    check_access(conversation_of("alice"), Principal("alice"), "conversation", need=need)


def test_check_access_reports_a_missing_resource_as_not_found() -> None:
    with pytest.raises(NotFound, match="conversation"):
        check_access(None, Principal("alice"), "conversation", need=Need.READ, shared=True)


@pytest.mark.parametrize("need", list(Need))
def test_check_access_denies_another_users_resource(need: Need) -> None:
    with pytest.raises(PermissionDenied, match="belongs to another user"):
        check_access(conversation_of("bob"), Principal("alice"), "conversation", need=need)


def test_check_access_lets_a_viewer_read_and_never_write() -> None:
    check_access(conversation_of("bob"), Principal("alice"), "conversation", need=Need.READ, shared=True)
    with pytest.raises(PermissionDenied, match="shared with you read-only"):
        check_access(conversation_of("bob"), Principal("alice"), "conversation", need=Need.WRITE, shared=True)


async def test_check_shared_access_asks_for_the_grant_only_when_the_caller_is_not_the_owner() -> None:
    asked: list[str] = []

    async def granted() -> bool:
        asked.append("asked")
        return True

    await check_shared_access(
        conversation_of("alice"), Principal("alice"), "conversation", need=Need.WRITE, granted=granted
    )
    assert asked == []
    await check_shared_access(
        conversation_of("bob"), Principal("alice"), "conversation", need=Need.READ, granted=granted
    )
    assert asked == ["asked"]
    with pytest.raises(PermissionDenied, match="shared with you read-only"):
        await check_shared_access(
            conversation_of("bob"), Principal("alice"), "conversation", need=Need.WRITE, granted=granted
        )
    with pytest.raises(NotFound):
        await check_shared_access(None, Principal("alice"), "conversation", need=Need.READ, granted=granted)
    assert asked == ["asked", "asked"]
