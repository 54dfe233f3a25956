"""Search and export use cases (`Conversations.search`, `.export`) against the in-memory storage."""

from __future__ import annotations

import csv
import io

import pytest

from service import chat
from service.chat import ConversationFields, Conversations
from service.domain import InvalidArgument, NotFound, PermissionDenied, Principal
from service.export import ExportFormat
from tests.fakes import ScriptedProvider
from tests.unit import test_conversations as base
from tests.unit.test_conversations import ALICE, BOB, MakeService

make_service = base.make_service  # the conversation use-case tests' fixture, shared


async def service_with(make_service: MakeService, *texts: str, user: Principal = ALICE) -> tuple[Conversations, str]:
    service = make_service(ScriptedProvider(["ok"]))
    conversation = await service.conversations.create(user, ConversationFields(model="scripted", title="Notes"))
    for text in texts:
        await service.replies.send(user, conversation.id, text, "", background=False)
    return service.conversations, conversation.id


async def test_search_is_scoped_to_the_caller_ranked_and_paged(make_service: MakeService) -> None:
    conversations, _ = await service_with(make_service, "otter", "otter otter otter", "otter otter")
    page = await conversations.search(ALICE, "Otter!", 2, "")
    rest = await conversations.search(ALICE, "otter", 2, page.next_page_token)

    assert [h.message.content for h in page.items] == ["otter otter otter", "otter otter"]
    assert [h.message.content for h in rest.items] == ["otter"] and rest.next_page_token == ""
    assert page.items[0].conversation_title == "Notes"
    assert (await conversations.search(BOB, "otter", 0, "")).items == []
    with pytest.raises(InvalidArgument):  # a token is bound to its user and query
        await conversations.search(ALICE, "ok", 2, page.next_page_token)


async def test_export_reads_page_by_page(make_service: MakeService, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chat, "EXPORT_PAGE_SIZE", 2)
    conversations, conversation_id = await service_with(make_service, "a", "b", "c")
    pieces = [p async for p in conversations.export(ALICE, conversation_id, ExportFormat.CSV, first_index=3)]

    assert len(pieces) == 1 + 3 + 1  # header, three pages of two messages, end
    rows = list(csv.reader(io.StringIO("".join(pieces), newline="")))
    assert [(r[0], r[2]) for r in rows[1:]] == [
        ("3", "a"),
        ("4", "ok"),
        ("5", "b"),
        ("6", "ok"),
        ("7", "c"),
        ("8", "ok"),
    ]


async def test_export_checks_before_writing(make_service: MakeService) -> None:
    conversations, conversation_id = await service_with(make_service, "a")
    with pytest.raises(InvalidArgument):
        await anext(conversations.export(ALICE, conversation_id, None))
    with pytest.raises(PermissionDenied):
        await anext(conversations.export(BOB, conversation_id, ExportFormat.JSON))
    with pytest.raises(NotFound):
        await anext(conversations.export(ALICE, "6f1c1a52-5f7c-4a51-9b0e-1f6d3b1f2a11", ExportFormat.JSON))
