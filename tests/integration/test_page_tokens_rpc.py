"""Page tokens over a real server, on both databases: a token whose MAC checks but whose cursor is malformed is
INVALID_ARGUMENT page_token (never a failed query), and the default MAC key is a random secret kept in the
database (shared by its replicas, surviving restarts), not something derived from configuration."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest

from chat.v1 import admin_pb2 as apb
from chat.v1 import admin_pb2_grpc
from chat.v1 import chat_pb2 as pb
from service.pagination import PageTokens
from service.storage.database import Database
from service.storage.shared_secrets import shared_secret
from tests.integration.harness import Replica, running_replica, settings_for
from tests.integration.rpc_errors import violations

pytestmark = pytest.mark.timeout(60)
SECRET = "a page token secret the test knows"
# Cursors no listing issues: not parseable, or out of range for the columns they are compared with.
MALFORMED = ["", "|", "-1", "\u0661\u0662", "nan|1", "\x00", "1.5|x", "k" * 100]
UUID = "0123abcd-0000-4000-8000-000000000000"
MALFORMED_FOR = {
    "conversations": [
        "x",
        f"2026-01-01T00:00:00|{UUID}",  # no time zone
        "2026-01-01T00:00:00+00:00|\x00",
        "2026-01-01T00:00:00+00:00|" + "x" * 500,
        f"9999-99-99T00:00:00+00:00|{UUID}",
        f"0001-01-01T00:00:00+05:00|{UUID}",  # before year 1 in UTC
        f"2026-01-01T00:00:00+00:00|{UUID.upper()}",
    ],
    "messages": ["x", "99999999999999999999999999", "1_0", "1.0", " 1"],
    "search": ["x", "1.5|99999999999999999999999999", "inf|1", "1e400|1", "1.5"],
    "api_keys": ["k" * 33, "key-1", "ключ"],
    "models": ["x", "9999999999", "1_0", "1.0", " 1"],
}

List = Callable[[Replica, str], Awaitable[object]]


async def _conversations(replica: Replica, token: str) -> object:
    request = pb.ListConversationsRequest(page_size=1, page_token=token)
    return await replica.stub.ListConversations(request, metadata=await replica.auth("alice"))


async def _admin(replica: Replica) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {await replica.key('root', admin=True)}"),)


@pytest.fixture
async def known(database_url: str) -> AsyncIterator[Replica]:
    async with running_replica(settings_for(database_url, page_token_secret=SECRET)) as running:
        yield running


async def test_a_malformed_cursor_is_invalid_page_token(known: Replica) -> None:
    auth = await known.auth("alice")
    cid = (await known.conversation("alice")).conversation_id
    admin = await _admin(known)
    keys = admin_pb2_grpc.AdminServiceStub(known.channel)
    listings: dict[str, Callable[[str], Awaitable[object]]] = {
        "conversations:alice": lambda t: known.stub.ListConversations(
            pb.ListConversationsRequest(page_token=t), metadata=auth
        ),
        f"messages:alice:{cid}": lambda t: known.stub.ListMessages(
            pb.ListMessagesRequest(conversation_id=cid, page_token=t), metadata=auth
        ),
        "search:alice\x00hello": lambda t: known.stub.SearchMessages(
            pb.SearchMessagesRequest(query="hello", page_token=t), metadata=auth
        ),
        "api_keys:*": lambda t: keys.ListApiKeys(apb.ListApiKeysRequest(page_token=t), metadata=admin),
        "models": lambda t: known.stub.ListModels(pb.ListModelsRequest(page_token=t), metadata=auth),
    }
    minted = PageTokens(SECRET.encode())
    for scope, listing in listings.items():
        for cursor in MALFORMED + MALFORMED_FOR[scope.partition(":")[0]]:
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await listing(minted.encode(scope, cursor))
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (scope, cursor, error.value.details())
            assert "page_token" in violations(error.value), (scope, cursor)


async def test_a_malformed_personas_cursor_is_invalid_page_token(known: Replica) -> None:
    auth = await known.auth("alice")
    minted = PageTokens(SECRET.encode())
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await known.stub.ListPersonas(pb.ListPersonasRequest(page_token=minted.encode("personas", "x")), metadata=auth)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value.details()


async def test_the_configured_secret_signs_tokens(known: Replica) -> None:
    for title in ("a", "b"):
        await known.conversation("alice", title=title)
    first = await _conversations(known, "")
    assert isinstance(first, pb.ListConversationsResponse)
    cursor = PageTokens(SECRET.encode()).decode("conversations:alice", first.next_page_token)
    assert cursor is not None
    second = await _conversations(known, PageTokens(SECRET.encode()).encode("conversations:alice", cursor))
    assert isinstance(second, pb.ListConversationsResponse) and [c.title for c in second.conversations] == ["a"]


async def test_a_token_signed_with_a_key_derived_from_the_database_url_is_refused(database_url: str) -> None:
    # Until now the default key was sha256(label + database URL): whoever guessed the URL could sign tokens.
    guessed = hashlib.sha256(b"chat-service page tokens\x00" + database_url.encode()).digest()
    async with running_replica(settings_for(database_url)) as replica:
        for title in ("a", "b"):
            await replica.conversation("alice", title=title)
        listed = await _conversations(replica, "")
        assert isinstance(listed, pb.ListConversationsResponse)
        last = listed.conversations[0]
        cursor = f"{last.update_time.ToDatetime().isoformat()}+00:00|{last.conversation_id}"
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await _conversations(replica, PageTokens(guessed).encode("conversations:alice", cursor))
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "page_token" in violations(error.value)


async def test_tokens_survive_a_restart(database_url: str) -> None:
    async with running_replica(settings_for(database_url)) as before:
        for title in ("a", "b", "c"):
            await before.conversation("alice", title=title)
        first = await _conversations(before, "")
        assert isinstance(first, pb.ListConversationsResponse) and first.next_page_token
    async with running_replica(settings_for(database_url)) as after:
        second = await _conversations(after, first.next_page_token)
        assert isinstance(second, pb.ListConversationsResponse) and [c.title for c in second.conversations] == ["b"]


async def test_replicas_on_one_database_accept_each_others_tokens(database_url: str) -> None:
    async with (
        running_replica(settings_for(database_url, replica_id="replica-a")) as a,
        running_replica(settings_for(database_url, replica_id="replica-b")) as b,
    ):
        for title in ("a", "b", "c"):
            await a.conversation("alice", title=title)
        on_a = await _conversations(a, "")
        assert isinstance(on_a, pb.ListConversationsResponse)
        on_b = await _conversations(b, on_a.next_page_token)
        assert isinstance(on_b, pb.ListConversationsResponse) and [c.title for c in on_b.conversations] == ["b"]
        back_on_a = await _conversations(a, on_b.next_page_token)
        assert isinstance(back_on_a, pb.ListConversationsResponse)
        assert [c.title for c in back_on_a.conversations] == ["a"]


async def test_replicas_starting_together_make_one_secret(database_url: str) -> None:
    databases = [Database(database_url) for _ in range(4)]
    try:
        made = await asyncio.gather(*(shared_secret(db, "race") for db in databases))
        assert len(set(made)) == 1 and len(made[0]) == 32
        assert await shared_secret(databases[0], "race") == made[0]
        assert await shared_secret(databases[1], "another") != made[0]
    finally:
        await asyncio.gather(*(db.dispose() for db in databases))
