"""Model text made storable and sendable, piece by piece.

A model can emit anything its wire format can carry: NUL (Postgres `text` refuses it), lone UTF-16 surrogates
(no database or protobuf string can hold them), or an astral character such as an emoji split into its two
surrogate escapes across two NDJSON lines (`"\\ud83d"` then `"\\ude00"`: in Python, two lone surrogates). The
cleaner joins split pairs back into the character, replaces whatever is left with U+FFFD, and holds back a
trailing high surrogate until the next piece says what it was — so readers never see text that changes later.
"""

from __future__ import annotations

import re

REPLACEMENT = "\ufffd"
# NUL, and any surrogate that is not part of a well-formed (high, low) pair.
_UNSTORABLE = re.compile(r"\x00|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]")
_PAIR = re.compile(r"[\ud800-\udbff][\udc00-\udfff]")


def _joined(match: re.Match[str]) -> str:
    high, low = match.group()[0], match.group()[1]
    return chr(0x10000 + ((ord(high) - 0xD800) << 10) + (ord(low) - 0xDC00))


def clean(text: str) -> str:
    """`text` with surrogate pairs joined and everything unstorable replaced by U+FFFD."""
    if text.isascii():
        return text.replace("\x00", REPLACEMENT) if "\x00" in text else text
    return _PAIR.sub(_joined, _UNSTORABLE.sub(REPLACEMENT, text))


class TextCleaner:
    """Cleans a reply's pieces in order; `finish()` returns what was held back."""

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held = ""

    def feed(self, piece: str) -> str:
        if self._held:
            piece, self._held = self._held + piece, ""
        elif piece.isascii() and "\x00" not in piece:
            return piece  # the common case, checked in C
        if piece and "\ud800" <= piece[-1] <= "\udbff":
            piece, self._held = piece[:-1], piece[-1]
        return clean(piece)

    def finish(self) -> str:
        held, self._held = self._held, ""
        return REPLACEMENT if held else ""
