"""Model text made storable: whatever pieces a model emits, what is kept is valid UTF-8 without NUL, split
surrogate pairs are joined into their character, and nothing a reader saw ever changes later."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from service.replies.text import REPLACEMENT, TextCleaner, clean

# Any code point, surrogates and NUL included: what a JSON `\u` escape can carry.
ANY_TEXT = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=()))


def cleaned_in_pieces(pieces: list[str]) -> str:
    cleaner = TextCleaner()
    return "".join(cleaner.feed(piece) for piece in pieces) + cleaner.finish()


@given(st.lists(ANY_TEXT, max_size=8))
def test_cleaning_piece_by_piece_equals_cleaning_the_whole(pieces: list[str]) -> None:
    assert cleaned_in_pieces(pieces) == clean("".join(pieces))


@given(ANY_TEXT)
def test_cleaned_text_is_storable_and_sendable(text: str) -> None:
    cleaned = clean(text)
    cleaned.encode("utf-8")  # strict: no surrogate left
    assert "\x00" not in cleaned


@given(st.text())
def test_clean_text_is_left_alone(text: str) -> None:
    valid = text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "")
    assert clean(valid) == valid


def test_an_emoji_split_into_two_escapes_across_pieces_is_joined() -> None:
    assert cleaned_in_pieces(["smile ", "\ud83d", "\ude00", "!"]) == "smile 😀!"
    assert cleaned_in_pieces(["\ud83d\ude00"]) == "😀"


def test_lone_surrogates_and_nul_become_the_replacement_character() -> None:
    assert cleaned_in_pieces(["a\x00b", "\udc00", "c\ud800"]) == f"a{REPLACEMENT}b{REPLACEMENT}c{REPLACEMENT}"
    assert cleaned_in_pieces(["\ud83d", "x"]) == f"{REPLACEMENT}x"


def test_a_held_back_high_surrogate_is_never_shown_before_its_pair() -> None:
    cleaner = TextCleaner()
    assert cleaner.feed("hi \ud83d") == "hi "
    assert cleaner.feed("\ude00") == "😀"
