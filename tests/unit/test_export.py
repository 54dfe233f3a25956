"""Export writers and search terms: pure functions, checked by parsing their output back."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.domain import Conversation, InvalidArgument, Message, MessageStatus, Role, search_terms
from service.export import CsvWriter, ExportFormat, JsonWriter, MarkdownWriter, inert, writer_for

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
CONVERSATION = Conversation("c1", "alice", "Title, with comma", "m", "", "", T0, T0)


def messages(contents: list[str]) -> list[Message]:
    return [
        Message(f"m{i}", "c1", "alice", Role.USER if i % 2 == 0 else Role.ASSISTANT, text, MessageStatus.COMPLETED,
                T0 + timedelta(seconds=i), T0 + timedelta(seconds=i))
        for i, text in enumerate(contents)
    ]  # fmt: skip


def write(writer: CsvWriter | JsonWriter | MarkdownWriter, pages: list[list[Message]]) -> str:
    return writer.begin(CONVERSATION) + "".join(writer.messages(page) for page in pages) + writer.end()


text = st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=40)


@given(st.lists(text, max_size=12), st.integers(min_value=1, max_value=5), st.integers(min_value=1, max_value=99))
def test_csv_round_trips_any_text_in_any_paging(contents: list[str], page: int, first: int) -> None:
    items = messages(contents)
    pages = [items[i : i + page] for i in range(0, len(items), page)]
    rows = list(csv.reader(io.StringIO(write(CsvWriter(first_index=first), pages), newline="")))
    assert rows[0] == ["index", "role", "content", "time"]
    assert [r[2] for r in rows[1:]] == [inert(c) for c in contents]
    assert [int(r[0]) for r in rows[1:]] == list(range(first, first + len(contents)))


@given(st.lists(text, max_size=12))
def test_no_csv_cell_starts_like_a_spreadsheet_formula(contents: list[str]) -> None:
    rows = list(csv.reader(io.StringIO(write(CsvWriter(), [messages(contents)]), newline="")))
    assert not any(cell.startswith(("=", "+", "-", "@", "\t", "\r")) for row in rows[1:] for cell in row[1:3])
    for cell, content in zip((r[2] for r in rows[1:]), contents, strict=True):
        assert cell == content or cell == "'" + content  # the text itself, never altered but for the apostrophe


def test_a_formula_in_a_message_is_exported_as_text() -> None:
    rows = list(csv.reader(io.StringIO(write(CsvWriter(), [messages(['=HYPERLINK("http://x")', "@SUM(A1)"])]))))
    assert [r[2] for r in rows[1:]] == ['\'=HYPERLINK("http://x")', "'@SUM(A1)"]


@given(st.lists(text, max_size=12), st.integers(min_value=1, max_value=5))
def test_json_round_trips_any_text_in_any_paging(contents: list[str], page: int) -> None:
    items = messages(contents)
    pages = [items[i : i + page] for i in range(0, len(items), page)]
    document = json.loads(write(JsonWriter(), pages))
    assert [m["content"] for m in document["messages"]] == contents
    assert document["conversation"]["title"] == "Title, with comma"


def test_csv_without_header_and_markdown_transcript() -> None:
    assert write(CsvWriter(header=False), [messages(["a"])]) == "1,user,a,2026-11-21T12:00:00Z\r\n"
    markdown = write(MarkdownWriter(), [messages(["Hi", "Hello!"])])
    assert markdown.startswith("# Title, with comma\n")
    assert "## User · 2026-11-21 12:00:00 UTC\n\nHi\n" in markdown
    assert "## Assistant · 2026-11-21 12:00:01 UTC\n\nHello!\n" in markdown
    assert isinstance(writer_for(ExportFormat.CSV), CsvWriter)


def test_search_terms() -> None:
    assert search_terms('Zebra "stripes" AND zebra* -(x)') == ("zebra", "stripes", "and", "x")
    assert search_terms("café naïve") == ("café", "naïve")
    for bad in ("", "?!", "x" * 501):
        with pytest.raises(InvalidArgument):
            search_terms(bad)
