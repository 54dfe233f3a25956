"""Attachments and sharing from the client library and the `chat` CLI, against a real server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from chat.v1 import chat_pb2 as pb
from chat_client import ChatClient, InvalidArgument, NotFound, PermissionDenied, SyncChatClient
from tests.clients.conftest import FAST_RETRY
from tests.clients.terminal import chat_env, run_chat
from tests.integration.harness import Replica
from tests.media import png


async def client_for(server: Replica, user: str) -> ChatClient:
    return ChatClient(server.address, api_key=await server.key(user), retry=FAST_RETRY)


# ------------------------------------------------------------------------------------------- library


async def test_the_client_uploads_sends_shares_and_a_viewer_reads(server: Replica, tmp_path: Path) -> None:
    notes = tmp_path / "notes.csv"
    notes.write_text("animal,tusks\nnarwhal,1\n")
    async with await client_for(server, "alice") as alice, await client_for(server, "bob") as bob:
        attached = await alice.upload_attachment(notes)
        image = await alice.upload_attachment(png(), filename="dot.png")
        assert (attached.filename, attached.content_type, attached.size_bytes) == (
            "notes.csv",
            "text/csv",
            notes.stat().st_size,
        )
        assert (image.content_type, image.sniffed_content_type) == ("image/png", "image/png")
        assert await alice.get_attachment(image.attachment_id) == image

        conversation = await alice.create_conversation(title="Narwhals")
        cid = conversation.conversation_id
        ids = [attached.attachment_id, image.attachment_id]
        stream = alice.stream_reply(cid, "What do my notes say?", attachment_ids=ids)
        events = [event async for event in stream]
        assert list(events[0].started.user_message.attachment_ids) == ids
        sent = await alice.send_message(cid, "More?", attachment_ids=[attached.attachment_id])
        assert list(sent.user_message.attachment_ids) == [attached.attachment_id]

        with pytest.raises(PermissionDenied):
            await bob.get_conversation(cid)
        granted = await alice.share_conversation(cid, "bob")
        assert (granted.user_id, granted.role) == ("bob", pb.SHARE_ROLE_VIEWER)
        assert [s.user_id async for s in alice.iter_conversation_shares(cid)] == ["bob"]

        shared = [c async for c in bob.iter_conversations(scope="shared")]
        assert [(c.conversation_id, c.owner_user_id) for c in shared] == [(cid, "alice")]
        assert [c async for c in bob.iter_conversations()] == []
        messages = [m async for m in bob.iter_messages(cid)]
        assert list(messages[0].attachment_ids) == ids
        assert await bob.download_attachment(image.attachment_id) == png()
        found = await bob.search_messages("notes", scope="shared")
        assert [r.message.content for r in found.results] == ["What do my notes say?"]
        with pytest.raises(PermissionDenied):
            await bob.send_message(cid, "let me in")

        await alice.unshare_conversation(cid, "bob")
        with pytest.raises(PermissionDenied):
            await bob.download_attachment(image.attachment_id)
        with pytest.raises(NotFound):
            await alice.unshare_conversation(cid, "bob")


async def test_the_client_reports_a_refused_upload(server: Replica) -> None:
    async with await client_for(server, "alice") as alice:
        with pytest.raises(InvalidArgument) as error:
            await alice.upload_attachment(png(), filename="photo.jpg")  # guessed image/jpeg; the bytes are a PNG
    assert [v.field for v in error.value.violations] == ["metadata.content_type"]


async def test_the_blocking_client_covers_the_same_calls(server: Replica) -> None:
    alice, bob = await server.key("alice"), await server.key("bob")

    def use() -> tuple[bytes, list[str], list[str]]:
        with SyncChatClient(server.address, api_key=alice, retry=FAST_RETRY) as owner:
            image = owner.upload_attachment(png(), filename="dot.png")
            cid = owner.create_conversation(title="sync").conversation_id
            owner.send_message(cid, "look", attachment_ids=[image.attachment_id])
            owner.share_conversation(cid, "bob")
            shares = [s.user_id for s in owner.iter_conversation_shares(cid)]
            assert owner.get_attachment(image.attachment_id) == image
        with SyncChatClient(server.address, api_key=bob, retry=FAST_RETRY) as viewer:
            titles = [c.title for c in viewer.iter_conversations(scope="all")]
            return viewer.download_attachment(image.attachment_id), shares, titles

    data, shares, titles = await asyncio.to_thread(use)
    assert (data, shares, titles) == (png(), ["bob"], ["sync"])


# ------------------------------------------------------------------------------------------- CLI


async def test_chat_attaches_files_shares_and_lists_what_is_shared(server: Replica, tmp_path: Path) -> None:
    alice = chat_env(server.address, await server.key("alice"), tmp_path)
    bob = chat_env(server.address, await server.key("bob"), tmp_path)
    notes = tmp_path / "notes.txt"
    notes.write_text("narwhal notes\n")

    code, out, err = await run_chat("--json", "ask", "--attach", str(notes), "Summarise my notes", env=alice)
    assert code == 0, err
    asked = json.loads(out)
    cid = asked["conversation_id"]
    code, out, err = await run_chat("ask", "--attach", str(notes), "--conversation", cid, "Again", env=alice)
    assert code == 0 and "attached notes.txt (text/plain, 14 bytes)" in err

    code, out, err = await run_chat("share", cid, "bob", env=alice)
    assert code == 0 and f"{cid} is shared with bob" in err
    code, out, _ = await run_chat("--json", "shares", cid, env=alice)
    assert [s["user_id"] for s in json.loads(out)] == ["bob"]

    code, out, _ = await run_chat("conversations", "--shared", env=bob)
    assert code == 0 and cid in out and "owner alice" in out
    code, out, _ = await run_chat("conversations", env=bob)
    assert cid not in out
    code, out, _ = await run_chat("--json", "history", cid, env=bob)
    (first, *_) = json.loads(out)
    attachment_id = first["attachment_ids"][0]
    target = tmp_path / "copy.txt"
    code, _, err = await run_chat("download", attachment_id, "--output", str(target), env=bob)
    assert code == 0, err
    assert target.read_bytes() == notes.read_bytes()
    code, out, _ = await run_chat("search", "--shared", "notes", env=bob)
    assert code == 0 and "Summarise my **notes**" in out

    code, _, err = await run_chat("ask", "--conversation", cid, "mine now?", env=bob)
    assert code == 1 and "PERMISSION_DENIED" in err
    code, _, err = await run_chat("unshare", cid, "bob", env=alice)
    assert code == 0, err
    code, out, err = await run_chat("conversations", "--shared", env=bob)
    assert code == 0 and "nothing is shared with you" in err


async def test_chat_says_which_file_it_cannot_attach(server: Replica, tmp_path: Path) -> None:
    env = chat_env(server.address, await server.key("alice"), tmp_path)

    code, _, err = await run_chat("ask", "--attach", str(tmp_path / "missing.png"), "hi", env=env)

    assert code == 2 and "cannot attach" in err and "missing.png" in err
    async with await client_for(server, "alice") as alice:
        assert [c async for c in alice.iter_conversations()] == []  # nothing was asked
