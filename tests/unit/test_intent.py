"""Finish requests and yes/no answers, as learners type them."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from service.domain.intent import (
    FINISH_PHRASES,
    YES_PHRASES,
    YES_WORDS,
    asks_to_finish,
    is_yes,
    might_ask_to_finish,
    normalize,
    similar_word,
)


@pytest.mark.parametrize(
    "text",
    [
        "I have to go",
        "i have to go now, sorry",
        "I HAVE TO GO",
        "I hvae to go",
        "i have to goo",
        "Let's stop here.",
        "lets stpo here",
        "Can we wrap up?",
        "can we wrpa up",
        "I'm done for today",
        "That's all for today, thanks!",
        "OK, bye!",
        "Could we end the sesion?",
        "I need to leave",
    ],
)
def test_finish_requests_are_recognised(text: str) -> None:
    assert asks_to_finish(text)


@pytest.mark.parametrize(
    "text",
    [
        "How do I say 'I have' in the past?",
        "I don't have to go yet",
        "I do not want to stop",
        "Can you help me buy a ticket?",
        "I went to the store",
        "",
        "the wrapper was red",
        "Can we shop for shoes?",  # a wrong letter in a four-letter word makes another word
    ],
)
def test_other_sentences_are_not_finish_requests(text: str) -> None:
    assert not asks_to_finish(text)


@pytest.mark.parametrize(
    "text",
    ["yes", "Yes!", "YES PLEASE", "yeah sure", "yep", "ok", "Okay.", "yse", "yess", "of course", "Sure, let's wrap up"],
)
def test_yes(text: str) -> None:
    assert is_yes(text)


@pytest.mark.parametrize(
    "text", ["no", "No thanks", "nope", "not yet", "yes but wait", "maybe later", "", "Tell me more", "yes? no."]
)
def test_not_yes(text: str) -> None:
    assert not is_yes(text)


def test_normalize_drops_case_accents_and_apostrophes() -> None:
    assert normalize("Let's  CAFÉ, naïve!") == ["lets", "cafe", "naive"]


@pytest.mark.parametrize(
    ("typed", "expected", "same"),
    [
        ("stop", "stop", True),
        ("stpo", "stop", True),
        ("session", "sesion", True),
        ("bye", "buy", False),
        ("go", "to", False),
        ("step", "stop", False),
    ],
)
def test_similar_word(typed: str, expected: str, same: bool) -> None:
    assert similar_word(typed, expected) is same


@pytest.mark.parametrize(
    ("text", "ambiguous"),
    [
        ("I think I'll head off soon", True),
        ("Is it OK if we end a bit early?", True),
        ("I have to go", False),  # clear: the rules decide
        ("How do I order a coffee?", False),
        ("", False),
    ],
)
def test_ambiguous_turns_are_those_that_mention_finishing(text: str, ambiguous: bool) -> None:
    assert might_ask_to_finish(text) is ambiguous


# ------------------------------------------------------------------------- one typo, never two (the docstring)

VOCABULARY = sorted({w for p in (*FINISH_PHRASES, *YES_PHRASES) for w in p.split()} | YES_WORDS)
# From how many letters a word tolerates each kind of typo (similar_word's docstring).
TOLERATED_FROM = {"doubled": 1, "swapped": 3, "missing": 4, "added": 4, "wrong": 5}
LETTERS = "abcdefghijklmnopqrstuvwxyz"


@st.composite
def typo(draw: st.DrawFn, word: str, kind: str, at: int | None = None) -> str:
    """`word` with one typo of `kind`, at position `at` (drawn when None)."""
    last = {"added": len(word), "swapped": len(word) - 2}.get(kind, len(word) - 1)
    i = draw(st.integers(0, last)) if at is None else at
    if kind == "doubled":
        return word[: i + 1] + word[i:]
    if kind == "swapped":
        assume(word[i] != word[i + 1])
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind == "missing":
        return word[:i] + word[i + 1 :]
    neighbours = {word[i - 1 : i], word[i : i + 1]} if kind == "added" else {word[i]}
    letter = draw(st.sampled_from([c for c in LETTERS if c not in neighbours]))  # an added neighbour is a doubling
    return word[:i] + letter + word[i + (kind == "wrong") :]


@settings(max_examples=500, deadline=None)
@given(st.data())
def test_one_typo_is_tolerated_from_the_stated_length(data: st.DataObject) -> None:
    word = data.draw(st.sampled_from(VOCABULARY))
    kind = data.draw(st.sampled_from(sorted(TOLERATED_FROM)))
    assume(len(word) >= {"swapped": 2, "missing": 2}.get(kind, 1))
    typed = data.draw(typo(word, kind))
    assert similar_word(typed, word) is (len(word) >= TOLERATED_FROM[kind]), (typed, word)


# Pairs of typos that are two edits apart by construction: the length changes by two, or letters change at
# positions that no single swap explains.
TWO_TYPOS = [("missing", "missing"), ("added", "added"), ("added", "doubled"), ("doubled", "doubled")] + [
    (a, b) for a in ("wrong", "swapped") for b in ("wrong", "swapped")
]


@settings(max_examples=500, deadline=None)
@given(st.data())
def test_two_typos_are_refused(data: st.DataObject) -> None:
    word = data.draw(st.sampled_from([w for w in VOCABULARY if len(w) >= 4]))
    first, second = data.draw(st.sampled_from(TWO_TYPOS))
    i = data.draw(st.integers(0, len(word) - 4))
    j = data.draw(st.integers(i + 2, len(word) - 2))  # the later typo first: `i` still points at the same letter
    typed = data.draw(typo(data.draw(typo(word, second, at=j)), first, at=i))
    assert not similar_word(typed, word), (typed, word)


@pytest.mark.parametrize(
    ("text", "yes"),
    [
        ("definitly", True),  # one letter missing
        ("dfinitly", False),  # two: a 0.8 similarity ratio took it for "definitely"
        ("defnitley", False),
        ("absolutley", True),
        ("abslutley", False),
    ],
)
def test_a_long_yes_word_carries_one_typo_not_two(text: str, yes: bool) -> None:
    assert is_yes(text) is yes
