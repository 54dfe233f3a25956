"""The `chat` console script as a subprocess against a real server; the interactive mode through a pty."""

from __future__ import annotations

import asyncio
import csv
import json
from pathlib import Path

import pytest

from chat.v1 import chat_pb2 as pb
from chat_client import ChatClient
from tests.clients.proxy import BreakingProxy
from tests.clients.terminal import TerminalSession, chat_env, run_chat
from tests.integration.harness import Replica
from tests.net import free_port


async def env_for(replica: Replica, tmp_path: Path, user: str = "alice", **extra: str) -> dict[str, str]:
    return chat_env(replica.address, await replica.key(user), tmp_path, **extra)


async def messages_of(replica: Replica, conversation_id: str, user: str = "alice") -> list[pb.Message]:
    async with ChatClient(replica.address, api_key=await replica.key(user)) as client:
        return [m async for m in client.iter_messages(conversation_id)]


def read_csv(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as file:
        return list(csv.reader(file))


async def test_ask_streams_the_reply_then_a_status_line(server: Replica, tmp_path: Path) -> None:
    env = await env_for(server, tmp_path)
    code, out, err = await run_chat("ask", "Hello there, who are you?", env=env)
    assert code == 0, err
    assert "tok/s" in err and "TTFT" in err and "fake-echo" in err
    conversation_id = err.strip().rsplit(" ", 1)[-1]
    stored = await messages_of(server, conversation_id)
    assert stored[0].content == "Hello there, who are you?"
    assert out == stored[1].content + "\n"
    assert "\x1b[" not in out + err  # no colours when not on a terminal


async def test_json_output_for_scripts(server: Replica, tmp_path: Path) -> None:
    env = await env_for(server, tmp_path)
    code, out, err = await run_chat("--json", "ask", "What is a narwhal?", env=env)
    assert code == 0, err
    asked = json.loads(out)
    conversation_id = asked["conversation_id"]
    assert asked["message"]["status"] == "MESSAGE_STATUS_COMPLETED" and asked["message"]["content"]

    code, out, _ = await run_chat("--json", "conversations", env=env)
    assert [c["conversation_id"] for c in json.loads(out)] == [conversation_id]
    code, out, _ = await run_chat("--json", "history", conversation_id, env=env)
    assert [m["role"] for m in json.loads(out)] == ["ROLE_USER", "ROLE_ASSISTANT"]
    code, out, _ = await run_chat("--json", "search", "narwhal", env=env)
    results = json.loads(out)
    assert [r["message"]["content"] for r in results] == ["What is a narwhal?"]
    assert "**narwhal**" in results[0]["snippet"]
    code, out, _ = await run_chat("search", "narwhal", env=env)
    assert code == 0 and "What is a **narwhal**?" in out


async def test_export_to_files_and_csv_append_continues_numbering(server: Replica, tmp_path: Path) -> None:
    env = await env_for(server, tmp_path)
    first = (await server.conversation("alice", title="Groceries")).conversation_id
    second = (await server.conversation("alice", title="Chores")).conversation_id
    for conversation, text in ((first, 'buy "milk", eggs'), (first, "and bread"), (second, "wash\nthe car")):
        code, _, err = await run_chat("ask", "--conversation", conversation, text, env=env)
        assert code == 0, err

    tasks = tmp_path / "tasks.csv"
    code, _, err = await run_chat("export", first, "--format", "csv", "--output", str(tasks), env=env)
    assert code == 0 and "wrote" in err
    code, _, err = await run_chat("export", second, "--format", "csv", "--output", str(tasks), "--append", env=env)
    assert code == 0, err
    rows = read_csv(tasks)
    assert rows[0] == ["index", "role", "content", "time"]
    assert [r[0] for r in rows[1:]] == ["1", "2", "3", "4", "5", "6"]
    stored = await messages_of(server, first) + await messages_of(server, second)
    assert [r[2] for r in rows[1:]] == [m.content for m in stored]

    code, out, _ = await run_chat("export", first, "--format", "markdown", env=env)
    assert code == 0 and out.startswith("# Groceries\n") and 'buy "milk", eggs' in out
    code, _, err = await run_chat("export", first, "--format", "json", "--output", str(tasks), "--append", env=env)
    assert code == 2 and "csv and markdown" in err


async def test_clear_messages_when_unreachable_or_the_key_is_wrong(server: Replica, tmp_path: Path) -> None:
    nowhere = chat_env(f"127.0.0.1:{free_port()}", "csk_whatever", tmp_path)
    code, _, err = await run_chat("conversations", env=nowhere)
    assert code == 3 and "cannot reach chat-service at 127.0.0.1:" in err

    wrong = chat_env(server.address, "csk_not_a_real_key", tmp_path)
    code, _, err = await run_chat("conversations", env=wrong)
    assert code == 4 and "refused the credentials" in err and "CHAT_CLIENT_API_KEY" in err

    code, _, err = await run_chat("conversations", env=chat_env(server.address, None, tmp_path))
    assert code == 4 and "no credentials" in err

    code, _, err = await run_chat("history", "not-a-uuid", env=await env_for(server, tmp_path))
    assert code == 1 and "INVALID_ARGUMENT" in err and "conversation_id" in err


async def test_settings_from_a_config_file_and_flags(server: Replica, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'address = "{server.address}"\napi_key = "{await server.key("alice")}"\n')
    env = chat_env("127.0.0.1:1", None, tmp_path)  # env names a wrong address: the flag wins over it
    del env["CHAT_CLIENT_ADDRESS"]
    code, out, err = await run_chat("--config", str(config), "--json", "models", env=env)
    assert code == 0, err
    assert json.loads(out)[0]["name"] == "fake-echo"
    env["CHAT_CLIENT_ADDRESS"] = "127.0.0.1:1"
    code, _, err = await run_chat("--config", str(config), "--address", server.address, "models", env=env)
    assert code == 0, err


async def test_coach_reports_when_the_server_cannot_coach(server: Replica, tmp_path: Path) -> None:
    env = await env_for(server, tmp_path)
    code, _, err = await run_chat("coach", "english_buddy", env=env, stdin="/end\n")
    if hasattr(pb, "CoachRequest"):  # stubs with Coach: a session starts and ends
        assert code == 0, err
    else:
        assert code == 1 and "coaching is not available" in err


async def test_interactive_conversation_with_slash_commands(server: Replica, tmp_path: Path) -> None:
    session = await TerminalSession.start(env=await env_for(server, tmp_path, TERM="xterm"))
    try:
        await session.expect("you> ")
        session.send("Hello from the terminal\n")
        await session.expect("tok/s")
        await session.expect("you> ")
        session.send("/list\n")
        await session.expect("Hello from the terminal")
        await session.expect("you> ")
        session.send("/search terminal\n")
        assert "**" not in await session.expect("you> ")  # matches are coloured, not starred, on a terminal
        session.send("/export csv " + str(tmp_path / "out.csv") + "\n")
        await session.expect("wrote")
        session.send("/nonsense\n")
        await session.expect("unknown command /nonsense")
        session.send("/quit\n")
        assert await session.wait() == 0
    finally:
        await session.close()
    assert "\x1b[" in session.raw.decode()  # colours on a terminal
    rows = read_csv(tmp_path / "out.csv")
    assert [r[2] for r in rows[1:2]] == ["Hello from the terminal"]


async def test_ctrl_c_cancels_the_reply_not_the_program(slow_server: Replica, tmp_path: Path) -> None:
    session = await TerminalSession.start(env=await env_for(slow_server, tmp_path, TERM="xterm"))
    try:
        await session.expect("you> ")
        session.send("Tell me a long story\n")
        await session.expect("Tell me a long story")
        for _ in range(100):  # until some of the reply is on screen (bounded)
            if len(session.screen[session._seen :].strip()) > 10:
                break
            session.raw += await session._read()
        session.send("\x03")
        await session.expect("CANCELLED")
        await session.expect("you> ")
        session.send("/quit\n")
        assert await session.wait() == 0
    finally:
        await session.close()
    async with ChatClient(slow_server.address, api_key=await slow_server.key("alice")) as client:
        conversation = await anext(client.iter_conversations())
    reply = (await messages_of(slow_server, conversation.conversation_id))[-1]
    assert reply.status == pb.MESSAGE_STATUS_CANCELLED
    assert 0 < len(reply.content) < 200


@pytest.mark.parametrize(
    ("line", "answer"),
    [
        ("/open", "usage: /open"),
        ("/search", "usage: /search"),
        ("/coach", "usage: /coach"),
        ("/export csv", "no conversation yet"),
    ],
)
async def test_slash_command_usage_errors(server: Replica, tmp_path: Path, line: str, answer: str) -> None:
    session = await TerminalSession.start(env=await env_for(server, tmp_path))
    try:
        await session.expect("you> ")
        session.send(line + "\n")
        assert answer in await session.expect("you> ")
        session.send("\x04")  # Ctrl-D leaves
        assert await session.wait() == 0
    finally:
        await session.close()


async def test_ask_resumes_on_its_own_when_the_connection_breaks(
    slow_server: Replica, proxy: tuple[BreakingProxy, str], tmp_path: Path
) -> None:
    breaking, address = proxy
    env = chat_env(address, await slow_server.key("alice"), tmp_path)
    asking = asyncio.create_task(run_chat("ask", "Tell me about the sea", env=env))
    for _ in range(300):  # until part of the reply has gone through the proxy (bounded)
        if breaking.bytes_to_client > 1500:
            break
        await asyncio.sleep(0.01)
    breaking.break_all()
    code, out, err = await asking
    assert code == 0, err
    assert err.count("\n") == 1, err  # the status line only: nothing was left running when chat exited
    assert breaking.connections >= 2
    conversation_id = err.strip().rsplit(" ", 1)[-1]
    reply = (await messages_of(slow_server, conversation_id))[-1]
    assert reply.status == pb.MESSAGE_STATUS_COMPLETED
    assert out == reply.content + "\n"
