"""Conversation exports as Markdown, JSON or CSV, written piece by piece so a long conversation never has to
be held in memory: `begin`, then `messages` once per page, then `end`; the pieces concatenate to the file."""

from __future__ import annotations

import csv
import enum
import io
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from service.domain import Conversation, Message

CSV_HEADER = ("index", "role", "content", "time")


class ExportFormat(enum.StrEnum):
    MARKDOWN = "markdown"
    JSON = "json"
    CSV = "csv"


MEDIA_TYPES = {
    ExportFormat.MARKDOWN: "text/markdown",
    ExportFormat.JSON: "application/json",
    ExportFormat.CSV: "text/csv",
}


def _time(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


class Writer(Protocol):
    def begin(self, conversation: Conversation) -> str: ...

    def messages(self, page: Sequence[Message]) -> str: ...

    def end(self) -> str: ...


class MarkdownWriter:
    def begin(self, conversation: Conversation) -> str:
        lines = [
            f"# {conversation.title}",
            "",
            f"- Conversation: `{conversation.id}`",
            f"- Model: {conversation.model}",
        ]
        if conversation.persona:
            lines.append(f"- Persona: {conversation.persona}")
        lines += [f"- Created: {_time(conversation.create_time)}", ""]
        return "\n".join(lines) + "\n"

    def messages(self, page: Sequence[Message]) -> str:
        return "".join(self._message(m) for m in page)

    @staticmethod
    def _message(m: Message) -> str:
        heading = f"## {m.role.value.capitalize()} · {m.create_time.strftime('%Y-%m-%d %H:%M:%S')} UTC"
        if m.status.value != "completed":
            heading += f" ({m.status.value})"
        return f"{heading}\n\n{m.content}\n\n"

    def end(self) -> str:
        return ""


def message_fields(m: Message) -> dict[str, Any]:
    """Every field of a message, JSON-ready."""
    return {
        "message_id": m.id,
        "conversation_id": m.conversation_id,
        "role": m.role.value,
        "content": m.content,
        "status": m.status.value,
        "model": m.model,
        "usage": {"prompt_tokens": m.usage.prompt_tokens, "completion_tokens": m.usage.completion_tokens},
        "finish_reason": m.finish_reason.value,
        "create_time": _time(m.create_time),
        "update_time": _time(m.update_time),
        "request_id": m.request_id,
        "error_message": m.error_message,
    }


class JsonWriter:
    def __init__(self) -> None:
        self._first = True

    def begin(self, conversation: Conversation) -> str:
        fields = {
            "conversation_id": conversation.id,
            "title": conversation.title,
            "model": conversation.model,
            "persona": conversation.persona,
            "system_prompt": conversation.system_prompt,
            "create_time": _time(conversation.create_time),
            "update_time": _time(conversation.update_time),
        }
        return '{"conversation": ' + json.dumps(fields, ensure_ascii=False) + ', "messages": ['

    def messages(self, page: Sequence[Message]) -> str:
        parts = []
        for m in page:
            parts.append(("\n  " if self._first else ",\n  ") + json.dumps(message_fields(m), ensure_ascii=False))
            self._first = False
        return "".join(parts)

    def end(self) -> str:
        return "\n]}\n"


# A cell a spreadsheet would read as a formula (OWASP "CSV injection"): a message is the user's or the model's
# words, never a formula, so such a cell is made text with a leading apostrophe (what spreadsheets show as text).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def inert(text: str) -> str:
    """`text` as a spreadsheet cell that cannot run: a leading formula character gets an apostrophe before it."""
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


class CsvWriter:
    """RFC 4180: CRLF line ends, fields quoted when they hold a comma, a quote or a line break; message text
    that a spreadsheet would run as a formula is made inert (see `inert`)."""

    def __init__(self, *, first_index: int = 1, header: bool = True) -> None:
        self._index = first_index
        self._header = header

    def _rows(self, rows: Sequence[Sequence[object]]) -> str:
        out = io.StringIO()
        csv.writer(out, dialect="excel", lineterminator="\r\n").writerows(rows)
        return out.getvalue()

    def begin(self, conversation: Conversation) -> str:
        return self._rows([CSV_HEADER]) if self._header else ""

    def messages(self, page: Sequence[Message]) -> str:
        rows = [(self._index + i, m.role.value, inert(m.content), _time(m.create_time)) for i, m in enumerate(page)]
        self._index += len(page)
        return self._rows(rows)

    def end(self) -> str:
        return ""


def writer_for(fmt: ExportFormat, *, first_index: int = 1, header: bool = True) -> Writer:
    if fmt is ExportFormat.CSV:
        return CsvWriter(first_index=first_index, header=header)
    return JsonWriter() if fmt is ExportFormat.JSON else MarkdownWriter()
