"""The message tree from the client library and the `chat` CLI (subprocess and pseudo-terminal), against a real
server: regenerate, edit and correct, list siblings, switch branches, delete messages."""

from __future__ import annotations

import json
from pathlib import Path

from chat.v1 import chat_pb2 as pb
from chat_client import ChatClient, NotFound
from tests.clients.conftest import FAST_RETRY
from tests.clients.proxy import BreakingProxy
from tests.clients.terminal import TerminalSession, chat_env, run_chat
from tests.integration.harness import Replica


async def branch_of(replica: Replica, conversation_id: str, branch: str = "") -> list[pb.Message]:
    async with ChatClient(replica.address, api_key=await replica.key("alice")) as client:
        return [m async for m in client.iter_messages(conversation_id, branch_message_id=branch)]


async def test_the_client_drives_the_tree(server: Replica) -> None:
    async with ChatClient(server.address, api_key=await server.key("alice"), retry=FAST_RETRY) as client:
        conversation_id = (await client.create_conversation(title="Tree")).conversation_id
        asked = await client.send_message(conversation_id, "what is a narwhal?")

        regenerated = client.regenerate_reply(asked.message.message_id)
        kinds = [event.WhichOneof("event") async for event in regenerated]
        assert kinds[0] == "started" and kinds[-1] == "completed"
        again = regenerated.message
        assert again is not None and regenerated.text == again.content
        assert again.parent_message_id == asked.user_message.message_id

        versions = [m async for m in client.iter_siblings(again.message_id, page_size=1)]
        assert [m.message_id for m in versions] == [asked.message.message_id, again.message_id]
        assert [(m.sibling_index, m.sibling_count) for m in versions] == [(0, 2), (1, 2)]

        edited = client.edit_message(asked.user_message.message_id, "what is a walrus?")
        reply = await edited.result()
        assert edited.started is not None and edited.started.user_message.content == "what is a walrus?"
        corrected = await client.edit_message(reply.message_id, "A big seal.").result()
        assert (corrected.content, corrected.model, corrected.status) == (
            "A big seal.",
            "",
            pb.MESSAGE_STATUS_COMPLETED,
        )
        assert [m.content for m in await branch_of(server, conversation_id)] == ["what is a walrus?", "A big seal."]

        switched = await client.set_current_branch(conversation_id, asked.user_message.message_id)
        assert switched.current_message_id == again.message_id
        old = [m.content async for m in client.iter_messages(conversation_id)]
        assert old == ["what is a narwhal?", again.content]
        exported = b"".join([c async for c in client.export_conversation(conversation_id, "json")])
        assert [m["content"] for m in json.loads(exported)["messages"]] == old

        deleted = await client.delete_message(asked.user_message.message_id)
        assert deleted.deleted_count == 3
        assert deleted.conversation.current_message_id == corrected.message_id  # the branch left
        try:
            await client.delete_message(asked.user_message.message_id)
            raise AssertionError("deleted twice")
        except NotFound:
            pass


async def test_a_regenerated_reply_broken_by_the_network_is_resumed(
    slow_server: Replica, proxy: tuple[BreakingProxy, str]
) -> None:
    breaking, address = proxy
    conversation = await slow_server.conversation("alice")
    async with ChatClient(slow_server.address, api_key=await slow_server.key("alice")) as direct:
        asked = await direct.send_message(conversation.conversation_id, "a story")
    async with ChatClient(address, api_key=await slow_server.key("alice"), retry=FAST_RETRY) as client:
        stream = client.regenerate_reply(asked.message.message_id)
        async for event in stream:
            if breaking.breaks == 0 and event.WhichOneof("event") == "delta" and stream.offset >= 40:
                breaking.break_all()
        assert stream.resumes >= 1 and stream.message is not None
        assert stream.message.status == pb.MESSAGE_STATUS_COMPLETED
    stored = (await branch_of(slow_server, conversation.conversation_id))[-1]
    assert stored.message_id == stream.message.message_id and stream.text == stored.content


async def test_the_cli_regenerates_edits_switches_and_deletes(server: Replica, tmp_path: Path) -> None:
    env = chat_env(server.address, await server.key("alice"), tmp_path)
    code, out, err = await run_chat("--json", "ask", "What is a narwhal?", env=env)
    assert code == 0, err
    asked = json.loads(out)
    conversation_id, first = asked["conversation_id"], asked["message"]["message_id"]
    question = (await branch_of(server, conversation_id))[0].message_id

    code, out, err = await run_chat("regenerate", first, env=env)
    assert code == 0, err
    stored = await branch_of(server, conversation_id)
    assert out == stored[-1].content + "\n" and f"message {stored[-1].message_id}" in err

    code, out, err = await run_chat("history", conversation_id, env=env)
    assert code == 0 and "< 2/2 >" in out and stored[-1].message_id in out
    code, out, _ = await run_chat("siblings", first, env=env)
    assert code == 0 and out.count("/2") == 2 and f"* 1/2  {first}" in out

    code, _, err = await run_chat("switch", conversation_id, first, env=env)
    assert code == 0 and first in err
    assert (await branch_of(server, conversation_id))[-1].message_id == first

    code, out, err = await run_chat("edit", question, "What is a walrus?", env=env)
    assert code == 0, err
    edited = await branch_of(server, conversation_id)
    assert edited[0].content == "What is a walrus?" and out == edited[-1].content + "\n"
    code, out, err = await run_chat("edit", edited[-1].message_id, "A big seal.", env=env)
    assert code == 0 and "correction stored" in err
    assert [m.content for m in await branch_of(server, conversation_id)] == ["What is a walrus?", "A big seal."]
    code, out, _ = await run_chat("history", conversation_id, "--branch", first, env=env)
    assert code == 0 and "What is a narwhal?" in out

    code, _, err = await run_chat("delete-message", question, env=env)
    assert code == 0 and "deleted 3 message(s)" in err
    code, _, err = await run_chat("delete-message", question, env=env)
    assert code == 1 and "NOT_FOUND" in err


async def test_the_interactive_session_has_tree_commands(server: Replica, tmp_path: Path) -> None:
    session = await TerminalSession.start(env=chat_env(server.address, await server.key("alice"), tmp_path))
    try:
        await session.expect("you> ")
        session.send("Hello from the terminal\n")
        await session.expect("tok/s")
        await session.expect("you> ")
        session.send("/regenerate\n")
        await session.expect("tok/s")
        await session.expect("you> ")
        session.send("/siblings\n")
        listed = await session.expect("you> ")
        assert "* 2/2" in listed and " 1/2" in listed
        first = next(line.split()[1] for line in listed.splitlines() if " 1/2 " in line)
        session.send(f"/switch {first}\n")
        await session.expect("< 1/2 >")
        await session.expect("you> ")
        session.send("/edit Hello again\n")
        await session.expect("tok/s")
        await session.expect("you> ")
        session.send("/history\n")
        shown = await session.expect("you> ")
        assert "Hello again" in shown and "Hello from the terminal" not in shown
        session.send(f"/delete {first}\n")
        await session.expect("deleted 1 message(s)")
        session.send("/quit\n")
        assert await session.wait() == 0
    finally:
        await session.close()
