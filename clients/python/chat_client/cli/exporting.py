"""Writing an export to a file or stdout. `--append` to a CSV continues the existing file's row numbering
(and leaves out the header), as the old terminal tool's task lists did."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import BinaryIO

from chat_client.sync import SyncChatClient


class ExportError(Exception):
    pass


def last_csv_index(path: Path) -> int:
    """The index column of the file's last row (0 for an empty file or one with only a header)."""
    with path.open(newline="", encoding="utf-8") as file:
        last = 0
        for row in csv.reader(file):
            if row and row[0].strip().isdigit():
                last = int(row[0])
            elif row and row[0] != "index":
                raise ExportError(f"{path} does not look like a chat CSV export (row {row[:1]!r})")
        return last


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as file:
        file.seek(0, io.SEEK_END)
        if file.tell() == 0:
            return True
        file.seek(-1, io.SEEK_END)
        return file.read(1) == b"\n"


def export(
    client: SyncChatClient, conversation_id: str, fmt: str, *, output: str | None = None, append: bool = False
) -> int:
    """Write the export; returns the number of bytes written."""
    first_index, omit_header, separator = 0, False, b""
    target = Path(output) if output else None
    if append:
        if target is None:
            raise ExportError("--append needs --output FILE")
        if fmt == "json":
            raise ExportError("--append works with csv and markdown; a JSON document cannot be appended to")
        if target.exists() and target.stat().st_size:
            if fmt == "csv":
                first_index, omit_header = last_csv_index(target) + 1, True
                separator = b"" if _ends_with_newline(target) else b"\r\n"
            else:
                separator = b"\n"
    chunks = client.export_conversation(conversation_id, fmt, first_index=first_index, omit_header=omit_header)
    if target is None:
        return _copy(chunks, sys.stdout.buffer)
    # Read the first chunk before touching the file: a refused export must not leave an empty file behind.
    first = next(chunks, b"")
    with target.open("ab" if append else "wb") as file:
        file.write(separator + first)
        return len(separator) + len(first) + _copy(chunks, file)


def _copy(chunks: object, file: BinaryIO) -> int:
    written = 0
    for chunk in chunks:  # type: ignore[attr-defined]
        file.write(chunk)
        written += len(chunk)
    file.flush()
    return written
