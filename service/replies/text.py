"""Model text made storable and sendable, piece by piece.

A model can emit anything its wire format can carry: NUL (Postgres `text` refuses it), lone UTF-16 surrogates
(no database or protobuf string can hold them), or an astral character such as an emoji split into its two
surrogate escapes across two NDJSON lines (`"\\ud83d"` then `"\\ude00"`: in Python, two lone surrogates). The
cleaner joins split pairs back into the character, replaces whatever is left with U+FFFD, and holds back a
trailing high surrogate until the next piece says what it was — so readers never see text that changes later.
"""

from __future__ import annotations

from service.domain import REPLACEMENT, clean


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
