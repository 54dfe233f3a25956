"""ChatClient against a real server: the whole API, typed errors, and reply streams broken by a TCP proxy."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chat.v1 import chat_pb2 as pb
from chat_client import (
    ChatClient,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    SyncChatClient,
    Unauthenticated,
    Unavailable,
)
from chat_client.retry import NO_RETRY
from tests.clients.conftest import FAST_RETRY, ThreadedServer, proxy_to
from tests.clients.proxy import BreakingProxy
from tests.integration.harness import Replica
from tests.net import free_port


async def stored_content(replica: Replica, user: str, message_id: str, conversation_id: str) -> str:
    async with ChatClient(replica.address, api_key=await replica.key(user)) as client:
        messages = [m async for m in client.iter_messages(conversation_id)]
    return next(m.content for m in messages if m.message_id == message_id)


async def test_client_covers_the_api(server: Replica) -> None:
    async with ChatClient(server.address, api_key=await server.key("alice"), retry=FAST_RETRY) as client:
        conversation = await client.create_conversation(title="Walrus facts")
        stream = client.stream_reply(conversation.conversation_id, "tell me about the walrus")
        kinds = [event.WhichOneof("event") async for event in stream]
        assert kinds[0] == "started" and kinds[-1] == "completed" and "delta" in kinds
        assert stream.message is not None and stream.text == stream.message.content != ""

        sent = await client.send_message(conversation.conversation_id, "and its tusks?")
        assert sent.message.status == pb.MESSAGE_STATUS_COMPLETED

        renamed = await client.update_conversation(conversation.conversation_id, title="Walruses")
        assert renamed.title == "Walruses" and renamed.model == conversation.model
        listed = [c.conversation_id async for c in client.iter_conversations(page_size=1)]
        assert listed == [conversation.conversation_id]
        messages = [m async for m in client.iter_messages(conversation.conversation_id, page_size=3)]
        assert [m.content for m in messages][::2] == ["tell me about the walrus", "and its tusks?"]

        found = await client.search_messages("walrus")
        assert [r.message.content for r in found.results] == ["tell me about the walrus"]
        document = json.loads(
            b"".join([c async for c in client.export_conversation(conversation.conversation_id, "json")])
        )
        assert len(document["messages"]) == 4
        rows = list(
            csv.reader(
                io.StringIO(
                    b"".join(
                        [
                            c
                            async for c in client.export_conversation(
                                conversation.conversation_id, "csv", first_index=7
                            )
                        ]
                    ).decode(),
                    newline="",
                )
            )
        )
        assert [r[0] for r in rows] == ["index", "7", "8", "9", "10"]

        replay = client.resume_reply(sent.message.message_id, offset=5)
        assert (await replay.result()).content == sent.message.content
        assert replay.text == sent.message.content[5:]

        assert (await client.list_models()).models[0].name == "fake-echo"
        await client.delete_conversation(conversation.conversation_id)
        with pytest.raises(NotFound):
            await client.get_conversation(conversation.conversation_id)


async def test_typed_errors_from_a_real_server(server: Replica) -> None:
    mine = await server.conversation("alice")
    async with ChatClient(server.address, api_key=await server.key("bob"), retry=FAST_RETRY) as bob:
        with pytest.raises(PermissionDenied):
            await bob.get_conversation(mine.conversation_id)
        with pytest.raises(InvalidArgument) as invalid:
            await bob.get_conversation("not-a-uuid")
        assert [v.field for v in invalid.value.violations] == ["conversation_id"]
        assert invalid.value.reason == "INVALID_ARGUMENT"
    async with ChatClient(server.address, api_key="csk_wrong_key") as stranger:
        with pytest.raises(Unauthenticated):
            await stranger.list_conversations()


async def test_an_unreachable_server_is_unavailable_after_retries(server: Replica) -> None:
    async with ChatClient(f"127.0.0.1:{free_port()}", api_key="k", retry=FAST_RETRY) as client:
        with pytest.raises(Unavailable):
            await client.list_conversations()


async def test_a_slow_connection_handshake_is_waited_for(server: Replica) -> None:
    # Nothing goes through for 300 ms: a distant or busy server. Without retries to mask it, the first
    # connection attempt itself must last that long (streams such as Coach are never retried).
    async with (
        proxy_to(server.address, latency=0.3) as (_, address),
        ChatClient(address, api_key=await server.key("alice"), retry=NO_RETRY) as client,
    ):
        assert [m.name for m in (await client.list_models()).models] == ["fake-echo"]


async def test_a_reply_broken_mid_stream_by_the_network_is_resumed(
    slow_server: Replica, proxy: tuple[BreakingProxy, str]
) -> None:
    breaking, address = proxy
    conversation = await slow_server.conversation("alice")
    async with ChatClient(address, api_key=await slow_server.key("alice"), retry=FAST_RETRY) as client:
        stream = client.stream_reply(conversation.conversation_id, "a long story please")
        breaks_at = (40, 120)  # code points: break twice, while the reply is still being generated
        async for event in stream:
            pending = breaking.breaks < len(breaks_at) and event.WhichOneof("event") == "delta"
            if pending and stream.offset >= breaks_at[breaking.breaks]:
                breaking.break_all()
        assert stream.resumes >= 2 and breaking.connections >= 3
        assert stream.message is not None and stream.message.status == pb.MESSAGE_STATUS_COMPLETED
        assert stream.text == stream.message.content
    assert stream.text == await stored_content(
        slow_server, "alice", stream.message.message_id, conversation.conversation_id
    )


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut_after=st.integers(min_value=0, max_value=2500))
def test_any_break_point_yields_the_stored_reply_exactly(brisk_server: ThreadedServer, cut_after: int) -> None:
    key = brisk_server.keys["alice"]

    async def scenario() -> tuple[list[str], pb.Message | None, str]:
        # A proxy per example: gRPC shares connections between channels to the same address.
        async with proxy_to(brisk_server.address) as (breaking, address):
            breaking.cut_next_after(cut_after)  # the connection dies after this many bytes from the server
            async with ChatClient(brisk_server.address, api_key=key) as direct:
                conversation = await direct.create_conversation()
            async with ChatClient(address, api_key=key, retry=FAST_RETRY) as client:
                stream = client.stream_reply(conversation.conversation_id, f"story {uuid.uuid4()}")
                texts = [e.delta.text async for e in stream if e.WhichOneof("event") == "delta"]
        assert stream.message is not None
        async with ChatClient(brisk_server.address, api_key=key) as direct:
            stored = [m async for m in direct.iter_messages(conversation.conversation_id)][-1]
        assert stored.message_id == stream.message.message_id
        return texts, stream.message, stored.content

    texts, message, stored = asyncio.run(scenario())
    assert message is not None
    assert "".join(texts) == stored == message.content


async def test_the_sync_client(server: Replica) -> None:
    key = await server.key("alice")

    def use() -> tuple[str, str, int]:
        with SyncChatClient(server.address, api_key=key, retry=FAST_RETRY) as client:
            conversation = client.create_conversation(title="sync")
            stream = client.stream_reply(conversation.conversation_id, "hello")
            message = stream.result()
            exported = b"".join(client.export_conversation(conversation.conversation_id, "markdown"))
            assert exported.startswith(b"# sync")
            return message.content, stream.stream.text, len(list(client.iter_messages(conversation.conversation_id)))

    content, text, count = await asyncio.to_thread(use)
    assert content == text != "" and count == 2
