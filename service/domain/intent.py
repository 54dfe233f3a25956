"""What a learner's words mean for the wrap-up: a request to finish, and a yes or a no. Pure text rules.

Learners type fast and in a second language, so matching is forgiving: case, punctuation and accents are
ignored, and each word may carry one typo (a doubled, swapped, missing, added or wrong letter; short words
fewer kinds, see `similar_word`), never two. A negation near a phrase ("I don't have to go") cancels it, and
so does a question about the session itself going on.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from rapidfuzz.distance import OSA

FINISH_PHRASES: tuple[str, ...] = (
    "i have to go",
    "i need to go",
    "i gotta go",
    "i must go",
    "i should go",
    "i have to leave",
    "i need to leave",
    "i must leave",
    "time to go",
    "lets stop",
    "lets stop here",
    "can we stop",
    "i want to stop",
    "id like to stop",
    "stop the session",
    "stop now",
    "lets finish",
    "can we finish",
    "i want to finish",
    "id like to finish",
    "finish the session",
    "lets end",
    "can we end",
    "end the session",
    "end session",
    "wrap up",
    "wrap it up",
    "lets call it a day",
    "thats all for today",
    "thats enough for today",
    "im done",
    "im finished",
    "goodbye",
    "bye",
    "see you later",
    "i have to run",
    "i gotta run",
)
# Words that often come with a wish to finish, in phrasings the rules above do not know ("I think I'll head
# off soon"): such turns are worth asking the model about.
FINISH_WORDS = frozenset(
    {"go", "going", "leave", "leaving", "stop", "finish", "end", "done", "bye", "wrap", "quit", "enough", "off", "run"}
)
YES_WORDS = frozenset({"yes", "yeah", "yep", "yup", "ya", "yea", "sure", "ok", "okay", "y", "absolutely", "definitely"})
YES_PHRASES: tuple[str, ...] = ("of course", "please do", "go ahead", "sounds good", "lets do it", "i do", "correct")
NEGATIONS = frozenset({"no", "not", "dont", "never", "nope", "cannot", "wont", "doesnt", "isnt", "nah", "neither"})
HESITATIONS = frozenset({"wait", "actually", "later", "yet", "maybe", "hmm", "but"})

# From how many letters a word tolerates a typo that changes its letters: below these lengths such a typo
# mostly makes another word ("bye" is not "buy", "shop" is not "stop").
_MISSING_OR_ADDED_FROM = 4
_WRONG_FROM = 5
_SWAPPED_FROM = 3  # "yse" is "yes"; "og" is not "go"


def normalize(text: str) -> list[str]:
    """Lower-case words without accents or punctuation; apostrophes vanish ("let's" -> "lets")."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    plain = "".join(c for c in decomposed if not unicodedata.combining(c)).replace("'", "").replace("\u2019", "")
    return re.findall(r"[a-z0-9]+", plain)


def similar_word(typed: str, expected: str) -> bool:
    """`typed` is `expected`, or `expected` with one typo (optimal string alignment distance 1): a letter
    doubled ("goo"), two neighbours swapped (3+ letters: "yse"), a letter missing or added (4+ letters:
    "stp"), or a wrong letter (5+ letters: "sessoon"). Two typos are never one word."""
    if typed == expected:
        return True
    if OSA.distance(typed, expected, score_cutoff=1) != 1:
        return False
    if len(typed) == len(expected):  # one wrong letter, or two neighbours swapped (the same letters)
        swapped = sorted(typed) == sorted(expected)
        return len(expected) >= (_SWAPPED_FROM if swapped else _WRONG_FROM)
    return len(expected) >= _MISSING_OR_ADDED_FROM or _doubled(typed, expected)


def _doubled(typed: str, expected: str) -> bool:
    """One letter typed twice ("goo", "yess"); `typed` is already one edit from `expected`."""
    return len(typed) == len(expected) + 1 and any(
        typed[i] == typed[i - 1] and typed[:i] + typed[i + 1 :] == expected for i in range(1, len(typed))
    )


def _matches_at(words: Sequence[str], start: int, phrase: Sequence[str]) -> bool:
    window = words[start : start + len(phrase)]
    return len(window) == len(phrase) and all(similar_word(w, p) for w, p in zip(window, phrase, strict=True))


def _find(words: Sequence[str], phrase: str) -> int | None:
    """Where `phrase` starts in `words` (typos allowed), or None."""
    expected = phrase.split()
    for start in range(len(words) - len(expected) + 1):
        if _matches_at(words, start, expected):
            return start
    return None


def _negated(words: Sequence[str], start: int, length: int) -> bool:
    nearby = words[max(0, start - 3) : start + length]
    return any(w in NEGATIONS for w in nearby)


def asks_to_finish(text: str) -> bool:
    """The learner asks to end the session ("I have to go", "Can we wrap up?", "lets stpo here")."""
    words = normalize(text)
    for phrase in FINISH_PHRASES:
        start = _find(words, phrase)
        if start is not None and not _negated(words, start, len(phrase.split())):
            return True
    return False


def might_ask_to_finish(text: str) -> bool:
    """Not a known finish request, but it mentions finishing: the model may tell better."""
    words = normalize(text)
    return any(w in FINISH_WORDS for w in words) and not asks_to_finish(text)


def is_yes(text: str) -> bool:
    """An answer that agrees to finish. Anything else — a no, a hesitation, another topic — is not a yes."""
    words = normalize(text)
    if not words or any(w in NEGATIONS or w in HESITATIONS for w in words):
        return False
    if any(similar_word(words[0], yes) for yes in YES_WORDS):
        return True
    return any(_find(words, phrase) is not None for phrase in YES_PHRASES) or asks_to_finish(text)
