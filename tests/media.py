"""Small real files for the attachment tests: a PNG made here (signature, IHDR, IDAT, IEND with their CRCs), and a
JPEG's first bytes (enough for any signature sniffer)."""

from __future__ import annotations

import struct
import zlib


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int = 1, height: int = 1, *, padding: int = 0) -> bytes:
    """A valid RGB PNG of one colour; `padding` bytes of an ancillary text chunk make it as big as a test needs."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = b"".join(b"\x00" + b"\x10\x80\xf0" * width for _ in range(height))
    extra = _chunk(b"tEXt", b"Comment\x00" + b"x" * padding) if padding else b""
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + extra
        + _chunk(b"IDAT", zlib.compress(rows))
        + _chunk(b"IEND", b"")
    )


def png_of_size(size: int) -> bytes:
    """A valid PNG of exactly `size` bytes (at least 90)."""
    base = len(png(padding=1)) - 1
    return png(padding=size - base)


JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + b"\x00" * 64 + b"\xff\xd9"
