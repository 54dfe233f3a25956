"""Sharing use cases (`Sharing`) and what a viewer may do through `Conversations` and `Replies`, against the
in-memory storage and a scripted provider."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from service.chat import ConversationFields, Conversations
from service.domain import (
    Conversation,
    ConversationScope,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Principal,
    ShareRole,
)
from service.export import ExportFormat
from service.replies import Delta, Ended, Replies, Started
from service.sharing import Sharing
from tests.fakes import FakeClock, FakeStorage, ScriptedProvider
from tests.wired import wire

ALICE, BOB, CAROL = Principal("alice"), Principal("bob"), Principal("carol")
MODEL = "scripted"
WAIT = 5.0


@dataclass
class Service:
    sharing: Sharing
    conversations: Conversations
    replies: Replies
    provider: ScriptedProvider
    storage: FakeStorage
    clock: FakeClock


@pytest.fixture
async def service() -> AsyncIterator[Service]:
    storage, clock = FakeStorage(), FakeClock()
    provider = ScriptedProvider(pieces=["a narwhal ", "story"])
    built = wire(storage, clock, provider)
    yield Service(built.sharing, built.conversations, built.replies, provider, storage, clock)
    await built.replies.close(0)


async def create(service: Service, principal: Principal = ALICE, title: str = "t") -> Conversation:
    conversation = await service.conversations.create(principal, ConversationFields(title=title))
    service.clock.advance(1)
    return conversation


async def shared_with_bob(service: Service) -> Conversation:
    conversation = await create(service)
    await service.replies.send(ALICE, conversation.id, "tell me about a narwhal", "", background=False)
    await service.sharing.share(ALICE, conversation.id, "bob")
    return conversation


def violated_field(error: pytest.ExceptionInfo[InvalidArgument]) -> str:
    (violation,) = error.value.violations
    return violation.field


# ---------------------------------------------------------------------------------------------- grants


async def test_the_owner_shares_lists_and_unshares(service: Service) -> None:
    conversation = await create(service)

    granted = await service.sharing.share(ALICE, conversation.id, "bob")
    await service.sharing.share(ALICE, conversation.id, "carol")
    assert (granted.user_id, granted.role, granted.create_time) == ("bob", ShareRole.VIEWER, service.clock())

    first = await service.sharing.shares(ALICE, conversation.id, 1, "")
    second = await service.sharing.shares(ALICE, conversation.id, 1, first.next_page_token)
    assert [s.user_id for s in [*first.items, *second.items]] == ["bob", "carol"]
    assert second.next_page_token == ""

    await service.sharing.unshare(ALICE, conversation.id, "bob")
    assert [s.user_id for s in (await service.sharing.shares(ALICE, conversation.id, 0, "")).items] == ["carol"]
    with pytest.raises(PermissionDenied):
        await service.conversations.get(BOB, conversation.id)


async def test_sharing_again_keeps_the_first_grant(service: Service) -> None:
    conversation = await create(service)
    first = await service.sharing.share(ALICE, conversation.id, "bob")
    service.clock.advance(60)

    assert await service.sharing.share(ALICE, conversation.id, "bob") == first


async def test_only_the_owner_manages_grants(service: Service) -> None:
    conversation = await shared_with_bob(service)

    for principal, reason in ((BOB, "read-only"), (CAROL, "another user")):
        with pytest.raises(PermissionDenied, match=reason):
            await service.sharing.share(principal, conversation.id, "mallory")
        with pytest.raises(PermissionDenied, match=reason):
            await service.sharing.unshare(principal, conversation.id, "bob")
        with pytest.raises(PermissionDenied, match=reason):
            await service.sharing.shares(principal, conversation.id, 0, "")
    assert [s.user_id for s in service.storage.state.shares.values()] == ["bob"]


@pytest.mark.parametrize("user_id", ["", "alice", "x" * 129, "bad\nid"])
async def test_the_user_to_share_with_must_be_another_valid_user_id(service: Service, user_id: str) -> None:
    conversation = await create(service)

    with pytest.raises(InvalidArgument) as error:
        await service.sharing.share(ALICE, conversation.id, user_id)

    assert violated_field(error) == "user_id"
    assert service.storage.state.shares == {}


async def test_unsharing_a_grant_that_does_not_exist_is_not_found(service: Service) -> None:
    conversation = await create(service)

    with pytest.raises(NotFound, match="not shared with 'bob'"):
        await service.sharing.unshare(ALICE, conversation.id, "bob")


async def test_deleting_a_conversation_deletes_its_grants(service: Service) -> None:
    conversation = await shared_with_bob(service)

    await service.conversations.delete(ALICE, conversation.id)

    assert service.storage.state.shares == {}


# ---------------------------------------------------------------------------------------------- viewers


async def test_a_viewer_reads_the_conversation_its_messages_and_its_export(service: Service) -> None:
    conversation = await shared_with_bob(service)

    assert await service.conversations.get(BOB, conversation.id) == await service.conversations.get(
        ALICE, conversation.id
    )
    messages = (await service.conversations.messages(BOB, conversation.id, 0, "")).items
    assert [m.content for m in messages] == ["tell me about a narwhal", "a narwhal story"]
    exported = "".join([p async for p in service.conversations.export(BOB, conversation.id, ExportFormat.CSV)])
    assert "a narwhal story" in exported


async def test_a_viewer_writes_nothing(service: Service) -> None:
    conversation = await shared_with_bob(service)
    (_, reply) = service.storage.messages_in(conversation.id)
    before = list(service.storage.state.messages.values()), service.storage.conversation(conversation.id)

    attempts = [
        service.conversations.update(BOB, conversation.id, ConversationFields(title="mine now"), ["title"]),
        service.conversations.delete(BOB, conversation.id),
        service.replies.send(BOB, conversation.id, "hi", "", background=False),
        anext(aiter(service.replies.stream(BOB, conversation.id, "hi", ""))),
        service.replies.cancel(BOB, reply.id),
    ]
    for attempt in attempts:
        with pytest.raises(PermissionDenied, match="read-only"):
            await attempt
    assert (list(service.storage.state.messages.values()), service.storage.conversation(conversation.id)) == before


async def test_a_viewer_follows_a_reply_live(service: Service) -> None:
    service.provider.pause_after = 1
    conversation = await create(service)
    await service.sharing.share(ALICE, conversation.id, "bob")
    _, reply = await service.replies.send(ALICE, conversation.id, "go on", "", background=True)

    async with asyncio.timeout(WAIT):
        events = aiter(service.replies.resume(BOB, reply.id, 0))
        assert isinstance(await anext(events), Started)
        first = await anext(events)
        assert isinstance(first, Delta) and first.text == "a narwhal "
        service.provider.release.set()
        rest = [event async for event in events]
    assert isinstance(rest[-1], Ended) and rest[-1].message.content == "a narwhal story"


async def test_a_stranger_reads_nothing(service: Service) -> None:
    conversation = await shared_with_bob(service)
    (_, reply) = service.storage.messages_in(conversation.id)

    for attempt in (
        service.conversations.get(CAROL, conversation.id),
        service.conversations.messages(CAROL, conversation.id, 0, ""),
        anext(aiter(service.conversations.export(CAROL, conversation.id, ExportFormat.JSON))),
        anext(aiter(service.replies.resume(CAROL, reply.id, 0))),
    ):
        with pytest.raises(PermissionDenied, match="another user"):
            await attempt


# ---------------------------------------------------------------------------------------------- listings


async def test_listings_cover_the_scope_asked_for(service: Service) -> None:
    own = await create(service, BOB, "bob's own")
    shared = await shared_with_bob(service)
    await create(service, ALICE, "alice keeps this one")

    async def listed(scope: ConversationScope) -> list[str]:
        return [c.title for c in (await service.conversations.list(BOB, 0, "", scope)).items]

    assert await listed(ConversationScope.OWNED) == [own.title]
    assert await listed(ConversationScope.SHARED) == [shared.title]
    assert await listed(ConversationScope.ALL) == [shared.title, own.title]  # most recently updated first


async def test_shared_listings_page_and_their_tokens_belong_to_their_scope(service: Service) -> None:
    titles = []
    for index in range(3):
        conversation = await create(service, ALICE, f"c{index}")
        await service.sharing.share(ALICE, conversation.id, "bob")
        titles.append(conversation.title)

    seen, token = [], ""
    while True:
        page = await service.conversations.list(BOB, 2, token, ConversationScope.SHARED)
        seen += [c.title for c in page.items]
        if not (token := page.next_page_token):
            break
        with pytest.raises(InvalidArgument):
            await service.conversations.list(BOB, 2, token, ConversationScope.OWNED)
    assert seen == titles[::-1]


async def test_search_covers_shared_conversations_only_when_asked(service: Service) -> None:
    await shared_with_bob(service)
    own = await create(service, BOB)
    await service.replies.send(BOB, own.id, "my own narwhal", "", background=False)

    async def found(principal: Principal, scope: ConversationScope) -> list[str]:
        page = await service.conversations.search(principal, "narwhal", 0, "", scope)
        return sorted(hit.message.content for hit in page.items)

    assert await found(BOB, ConversationScope.OWNED) == ["a narwhal story", "my own narwhal"]
    assert await found(BOB, ConversationScope.SHARED) == ["a narwhal story", "tell me about a narwhal"]
    assert len(await found(BOB, ConversationScope.ALL)) == 4
    assert await found(CAROL, ConversationScope.ALL) == []
