"""Page sizes (AIP-158) and opaque page tokens bound to one listing."""

from __future__ import annotations

import base64

import pytest

from service.domain import InvalidArgument
from service.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, PageTokens, page_size

SCOPE = "conversations:alice"


def violated_field(error: pytest.ExceptionInfo[InvalidArgument]) -> str:
    (violation,) = error.value.violations
    return violation.field


@pytest.fixture
def tokens() -> PageTokens:
    return PageTokens(b"test secret")


# ---------------------------------------------------------------------------------------------- page_size


def test_page_size_zero_means_the_default() -> None:
    assert page_size(0) == DEFAULT_PAGE_SIZE == 50


@pytest.mark.parametrize("value", [1, 17, MAX_PAGE_SIZE])
def test_page_size_within_limits_is_kept(value: int) -> None:
    assert page_size(value) == value


@pytest.mark.parametrize("value", [MAX_PAGE_SIZE + 1, 10**9])
def test_page_size_above_the_maximum_is_coerced(value: int) -> None:
    assert page_size(value) == MAX_PAGE_SIZE == 1000


@pytest.mark.parametrize("value", [-1, -1000])
def test_negative_page_size_is_invalid(value: int) -> None:
    with pytest.raises(InvalidArgument) as error:
        page_size(value)

    assert violated_field(error) == "page_size"


# ---------------------------------------------------------------------------------------------- PageTokens


@pytest.mark.parametrize("cursor", ["2025-01-01T12:00:00+00:00|8d3f", "42", "", "naïve 🙂 cursor"])
def test_a_token_decodes_to_its_cursor(tokens: PageTokens, cursor: str) -> None:
    token = tokens.encode(SCOPE, cursor)

    assert token
    assert tokens.decode(SCOPE, token) == cursor


def test_no_cursor_means_no_token_and_no_token_means_the_first_page(tokens: PageTokens) -> None:
    assert tokens.encode(SCOPE, None) == ""
    assert tokens.decode(SCOPE, "") is None


def test_tokens_are_url_safe_and_do_not_show_the_cursor(tokens: PageTokens) -> None:
    token = tokens.encode(SCOPE, "2025-01-01T12:00:00+00:00|secret-id")

    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert "secret-id" not in token


def test_tokens_of_another_instance_with_the_same_secret_are_accepted(tokens: PageTokens) -> None:
    token = tokens.encode(SCOPE, "42")

    assert PageTokens(b"test secret").decode(SCOPE, token) == "42"


def assert_rejected(tokens: PageTokens, scope: str, token: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        tokens.decode(scope, token)
    assert violated_field(error) == "page_token"


def test_a_token_from_another_scope_is_invalid(tokens: PageTokens) -> None:
    token = tokens.encode("conversations:bob", "42")

    assert_rejected(tokens, SCOPE, token)


def test_a_token_signed_with_another_secret_is_invalid(tokens: PageTokens) -> None:
    token = PageTokens(b"other secret").encode(SCOPE, "42")

    assert_rejected(tokens, SCOPE, token)


def test_a_token_with_an_edited_cursor_is_invalid(tokens: PageTokens) -> None:
    token = tokens.encode(SCOPE, "42")
    blob = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    forged = base64.urlsafe_b64encode(blob[:-2] + b"99").decode().rstrip("=")

    assert_rejected(tokens, SCOPE, forged)


def test_a_token_with_a_flipped_tag_bit_is_invalid(tokens: PageTokens) -> None:
    token = tokens.encode(SCOPE, "42")
    blob = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    blob[0] ^= 1

    assert_rejected(tokens, SCOPE, base64.urlsafe_b64encode(bytes(blob)).decode())


@pytest.mark.parametrize("garbage", ["garbage", "!!!!", "é", "a", "====", "AAAA", "\x00"])
def test_garbage_is_invalid(tokens: PageTokens, garbage: str) -> None:
    assert_rejected(tokens, SCOPE, garbage)


def test_a_truncated_token_is_invalid(tokens: PageTokens) -> None:
    token = tokens.encode(SCOPE, "2025-01-01T12:00:00+00:00|8d3f")

    for cut in (1, 5, len(token) // 2, len(token) - 1):
        assert_rejected(tokens, SCOPE, token[:cut])


def test_a_token_carrying_invalid_utf8_is_invalid(tokens: PageTokens) -> None:
    raw = b"\xff\xfe"
    forged_tag = tokens._tag(SCOPE, raw)  # a correctly signed but undecodable cursor
    token = base64.urlsafe_b64encode(forged_tag + raw).decode()

    assert_rejected(tokens, SCOPE, token)


# ---------------------------------------------------------------------------------------------- request / slice


def test_a_request_checks_the_size_before_the_token(tokens: PageTokens) -> None:
    with pytest.raises(InvalidArgument) as error:
        tokens.request(SCOPE, -1, "not a token")
    assert violated_field(error) == "page_size"


def test_a_request_carries_the_cursor_and_its_page_the_next_token(tokens: PageTokens) -> None:
    first = tokens.request(SCOPE, 0, "")
    assert (first.limit, first.after) == (DEFAULT_PAGE_SIZE, None)
    page = first.page(["a", "b"], "cursor-2")
    second = tokens.request(SCOPE, 2, page.next_page_token)
    assert (second.limit, second.after) == (2, "cursor-2")
    assert second.page(["c"], None).next_page_token == ""
    with pytest.raises(InvalidArgument):
        tokens.request("conversations:bob", 2, page.next_page_token)


def test_a_slice_pages_through_a_list_in_memory(tokens: PageTokens) -> None:
    items, seen, token = list(range(5)), [], ""
    for _ in range(len(items)):
        page = tokens.slice("numbers", items, 2, token)
        seen += page.items
        token = page.next_page_token
        if not token:
            break
    assert seen == items
    with pytest.raises(InvalidArgument):
        tokens.slice("other", items, 2, tokens.slice("numbers", items, 2, "").next_page_token)
