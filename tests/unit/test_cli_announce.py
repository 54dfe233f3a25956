"""`chat-service serve` announces "listening on" in one write: the workers of `--workers N` share their
supervisor's stdout, and with an unbuffered stdout (PYTHONUNBUFFERED, as in the image) `print` writes the text
and its newline separately, so two workers' lines could interleave (seen as a blank line where the second
worker's announcement was expected)."""

from __future__ import annotations

import io

import pytest

from service.cli import announce


class Writes(io.RawIOBase):
    """A raw stream that records each write it is given."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.chunks.append(bytes(data))
        return len(data)


def unbuffered(raw: Writes) -> io.TextIOWrapper:
    """stdout as Python makes it under PYTHONUNBUFFERED=1: unbuffered bytes, text written through."""
    return io.TextIOWrapper(raw, encoding="utf-8", write_through=True)  # type: ignore[arg-type]


def test_print_would_split_the_line_on_an_unbuffered_stdout() -> None:
    raw = Writes()
    print("chat-service listening on 127.0.0.1:1", file=unbuffered(raw), flush=True)
    assert raw.chunks == [b"chat-service listening on 127.0.0.1:1", b"\n"]  # why `announce` exists


def test_the_listening_line_is_one_write(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = Writes()
    monkeypatch.setattr("sys.stdout", unbuffered(raw))

    announce("chat-service listening on 127.0.0.1:1")

    assert raw.chunks == [b"chat-service listening on 127.0.0.1:1\n"]
