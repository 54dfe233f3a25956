"""Terminal output: colours and a spinner only on a TTY (and never with NO_COLOR), plain text otherwise."""

from __future__ import annotations

import json
import os
import re
import sys
import threading
from typing import Any, TextIO

from google.protobuf import json_format
from google.protobuf.message import Message

_STYLES = {"dim": "2", "bold": "1", "red": "31", "green": "32", "yellow": "33", "blue": "34", "cyan": "36"}
_MATCH = re.compile(r"\*\*(.+?)\*\*")


def as_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


class Terminal:
    def __init__(self, out: TextIO | None = None, err: TextIO | None = None, *, color: bool | None = None) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        if color is None:
            color = self.out.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"
        self.color = color
        self.interactive_err = self.err.isatty()

    def style(self, text: str, *names: str) -> str:
        if not self.color or not names:
            return text
        codes = ";".join(_STYLES[name] for name in names)
        return f"\033[{codes}m{text}\033[0m"

    def highlight(self, snippet: str) -> str:
        """Search snippets mark matches with `**`: bold yellow on a TTY, kept as `**` otherwise."""
        if not self.color:
            return snippet
        return _MATCH.sub(lambda m: self.style(m.group(1), "bold", "yellow"), snippet)

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def line(self, text: str = "") -> None:
        self.write(text + "\n")

    def note(self, text: str) -> None:
        """Secondary information (status lines, hints) on stderr, so stdout stays the data."""
        self.err.write((self.style(text, "dim") if self.color else text) + "\n")
        self.err.flush()

    def error(self, text: str) -> None:
        self.err.write(self.style(f"error: {text}", "red") + "\n")
        self.err.flush()

    def json(self, value: Any) -> None:
        self.line(json.dumps(value, ensure_ascii=False, indent=2))

    def spinner(self, label: str) -> Spinner:
        return Spinner(self.err if self.interactive_err else None, label)


class Spinner:
    """A spinner on stderr while waiting for the first token; does nothing when stderr is not a TTY."""

    FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"

    def __init__(self, stream: TextIO | None, label: str) -> None:
        self._stream = stream
        self._label = label
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Spinner:
        if self._stream is not None:
            self._thread = threading.Thread(target=self._spin, daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(1)
        self._thread = None
        assert self._stream is not None
        self._stream.write("\r\033[K")
        self._stream.flush()

    def _spin(self) -> None:
        assert self._stream is not None
        i = 0
        while not self._stop.wait(0.1):
            self._stream.write(f"\r{self.FRAMES[i % len(self.FRAMES)]} {self._label}")
            self._stream.flush()
            i += 1
