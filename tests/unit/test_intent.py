"""Finish requests and yes/no answers, as learners type them."""

from __future__ import annotations

import pytest

from service.coaching.intent import asks_to_finish, is_yes, might_ask_to_finish, normalize, similar_word


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
