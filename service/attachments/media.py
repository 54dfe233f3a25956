"""Media types of uploaded files: the declared type checked, the bytes sniffed (by their signature, with
`puremagic`), and whether the two disagree in a way that matters.

It matters for the files the service interprets: an image it sends to a model must be the image format declared,
and a text file must be UTF-8 text. Any other declared type is kept as declared (the service only stores and
serves those bytes) and the sniffed type is reported beside it.
"""

from __future__ import annotations

import re

import puremagic

from service.domain import PROMPT_IMAGE_TYPES, InvalidArgument, is_text_type, shown

OCTET_STREAM = "application/octet-stream"
TEXT = "text/plain"
SNIFF_BYTES = 64 * 1024  # signatures are at the start; text is judged on the whole file
MEDIA_TYPE_MAX = 127
# RFC 6838: type "/" subtype, each a restricted name; parameters (`; charset=...`) are dropped.
_MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,62}/[a-z0-9][a-z0-9!#$&^_.+-]{0,62}")
ALIASES = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg", "image/x-png": "image/png", "text/x-csv": "text/csv"}


def declared_type(field_name: str, value: str) -> str:
    """A declared media type, normalised (lower case, without parameters, common aliases resolved); "" if none."""
    if len(value) > MEDIA_TYPE_MAX * 2:
        raise InvalidArgument.field(field_name, f"must be at most {MEDIA_TYPE_MAX} characters")
    media_type = value.split(";", 1)[0].strip().lower()
    if not media_type:
        return ""
    if not _MEDIA_TYPE.fullmatch(media_type):
        raise InvalidArgument.field(field_name, f"{shown(value)!r} is not a media type (like image/png or text/plain)")
    return ALIASES.get(media_type, media_type)


def sniff(data: bytes) -> str:
    """What the bytes are: a format recognised by its signature, else text/plain for UTF-8 text, else
    application/octet-stream."""
    try:
        candidates = puremagic.magic_string(data[:SNIFF_BYTES])
    except (puremagic.PureError, ValueError):
        candidates = []
    recognised = next((c.mime_type for c in candidates if c.mime_type), "")
    if recognised:
        return ALIASES.get(recognised, recognised)
    return TEXT if is_utf8_text(data) else OCTET_STREAM


def is_utf8_text(data: bytes) -> bool:
    try:
        return "\x00" not in data.decode("utf-8")
    except UnicodeDecodeError:
        return False


def check_match(declared: str, sniffed: str, data: bytes) -> None:
    """INVALID_ARGUMENT when the bytes are not what is declared, for the types the service interprets."""
    if declared in PROMPT_IMAGE_TYPES and sniffed != declared:
        _mismatch(declared, sniffed)
    if is_text_type(declared) and not is_utf8_text(data):
        _mismatch(declared, f"not UTF-8 text ({sniffed})")


def _mismatch(declared: str, found: str) -> None:
    raise InvalidArgument.field(
        "metadata.content_type", f"is {declared}, but the content is {found}: declare what the file is"
    )
