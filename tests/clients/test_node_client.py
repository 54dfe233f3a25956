"""The TypeScript client (clients/node, grpc-js + proto-loader) against a real server: it streams a reply, resumes
it by code-point offset after the network breaks it, and decodes a failed call's google.rpc details.

`make test` installs and builds clients/node (`npm ci` from its lockfile, then `tsc`). Node is assumed (it is
on every machine of this project): without it, or without the build, these tests fail, they never skip.

The fake model's replies hold an emoji (🙂, one code point, two UTF-16 code units): past it, a client that
counted offsets with JavaScript's `.length` would resume at the wrong place."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sqlite3
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from chat.v1 import chat_pb2 as pb
from service.llm.fake import scripted_tokens
from tests.clients.proxy import BreakingProxy
from tests.e2e.process import Server, command
from tests.integration.harness import Replica, running_replica, settings_for
from tests.net import free_port

ROOT = Path(__file__).resolve().parents[2]
NODE_CLIENT = ROOT / "clients" / "node"
CLI = NODE_CLIENT / "dist" / "cli.js"
EMOJI = "🙂"  # outside the Basic Multilingual Plane: two UTF-16 code units
RUN_LIMIT = 30.0  # seconds one run of the client may take (a reply here lasts under 2 s)


def utf16_length(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


@pytest.fixture(scope="module")
def node() -> str:
    executable = shutil.which("node")
    assert executable is not None, "node is not on PATH: the Node client's tests need Node.js 20+ (and npm)"
    assert CLI.exists(), "clients/node is not built: run `make test` (or `npm ci && npm run build` in clients/node)"
    sources = [*NODE_CLIENT.glob("src/*.ts"), *(ROOT / "protos").rglob("*.proto"), NODE_CLIENT / "package-lock.json"]
    stale = [str(s.relative_to(ROOT)) for s in sources if s.stat().st_mtime > CLI.stat().st_mtime]
    assert not stale, f"clients/node/dist is older than {stale}: run `make test` (or `npm run build` in clients/node)"
    return executable


@pytest.fixture
async def paced_server(sqlite_url: str) -> AsyncIterator[Replica]:
    """Replies of 64 tokens at 200 tokens/s: a delta per token or so, many of them after an emoji."""
    async with running_replica(settings_for(sqlite_url, fake_tokens_per_second=200)) as running:
        yield running


@dataclass
class NodeRun:
    """One run of `chat-node --json`: its output lines, read as they come."""

    process: asyncio.subprocess.Process
    lines: list[dict[str, Any]] = field(default_factory=list)

    async def next_line(self) -> dict[str, Any] | None:
        assert self.process.stdout is not None
        raw = await self.process.stdout.readline()
        if not raw:
            return None
        self.lines.append(json.loads(raw))
        return self.lines[-1]

    async def finish(self) -> int:
        """Reads the rest of the output and returns the exit status."""
        while await self.next_line() is not None:
            pass
        assert self.process.stderr is not None
        stderr = await self.process.stderr.read()
        status = await self.process.wait()
        assert stderr == b"", stderr.decode()
        return status

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line["event"] == kind]

    def text(self) -> str:
        return "".join(line["text"] for line in self.events("delta"))


@pytest.fixture
async def chat_node(node: str) -> AsyncIterator[Any]:
    """Starts `chat-node --json ARGS` against `address`; every run is killed if still running at the end."""
    runs: list[NodeRun] = []
    # grpc-js honours proxy variables: the client must reach 127.0.0.1 directly.
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}

    async def start(address: str, key: str, *args: str) -> NodeRun:
        process = await asyncio.create_subprocess_exec(
            node,
            str(CLI),
            "--json",
            "--address",
            address,
            "--api-key",
            key,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        runs.append(NodeRun(process))
        return runs[-1]

    try:
        yield start
    finally:
        for run in runs:
            if run.process.returncode is None:
                run.process.kill()
                await run.process.wait()


async def stored_reply(replica: Replica, user: str, conversation_id: str) -> pb.Message:
    response = await replica.stub.ListMessages(
        pb.ListMessagesRequest(conversation_id=conversation_id), metadata=await replica.auth(user)
    )
    return response.messages[-1]


async def test_streams_a_reply_with_code_point_offsets(paced_server: Replica, chat_node: Any) -> None:
    run = await chat_node(paced_server.address, await paced_server.key("alice"), "ask", "tell me a story")
    async with asyncio.timeout(RUN_LIMIT):
        assert await run.finish() == 0

    [started] = run.events("started")
    stored = await stored_reply(paced_server, "alice", started["conversationId"])
    assert EMOJI in stored.content and stored.status == pb.MESSAGE_STATUS_COMPLETED
    assert run.text() == stored.content
    # Each offset counts the code points before it (Python's len), not UTF-16 units (JavaScript's .length).
    deltas = run.events("delta")
    assert any(EMOJI in d["text"] for d in deltas[:-1]), "no delta follows an emoji"
    assert [d["offset"] for d in deltas] == [len("".join(d["text"] for d in deltas[:i])) for i in range(len(deltas))]
    [completed] = run.events("completed")
    assert completed["content"] == stored.content and completed["messageId"] == stored.message_id
    assert completed["status"] == "MESSAGE_STATUS_COMPLETED"


async def test_prints_the_reply_as_text(server: Replica, node: str) -> None:
    process = await asyncio.create_subprocess_exec(
        node,
        str(CLI),
        "ask",
        "tell me a story",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={
            "PATH": os.environ.get("PATH", ""),
            "CHAT_CLIENT_ADDRESS": server.address,
            "CHAT_CLIENT_API_KEY": await server.key("bob"),
        },
    )
    async with asyncio.timeout(RUN_LIMIT):
        stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    listed = await server.stub.ListConversations(pb.ListConversationsRequest(), metadata=await server.auth("bob"))
    [conversation] = listed.conversations
    assert stdout.decode() == (await stored_reply(server, "bob", conversation.conversation_id)).content + "\n"


async def test_a_reply_broken_past_an_emoji_resumes_at_its_code_point_offset(
    slow_server: Replica, proxy: tuple[BreakingProxy, str], chat_node: Any
) -> None:
    breaking, address = proxy
    run = await chat_node(address, await slow_server.key("alice"), "ask", "tell me a story")
    async with asyncio.timeout(RUN_LIMIT):
        # The reply takes ~1.6 s and holds an emoji in each 28 words: break the connection at the first delta
        # that follows one, while the rest is still being generated.
        while (line := await run.next_line()) is not None and breaking.breaks == 0:
            if line["event"] == "delta" and EMOJI in run.text():
                broken_at = run.text()
                breaking.break_all()
        assert await run.finish() == 0

    assert breaking.breaks == 1 and breaking.connections >= 2
    [started] = run.events("started")
    stored = await stored_reply(slow_server, "alice", started["conversationId"])
    assert stored.status == pb.MESSAGE_STATUS_COMPLETED
    assert run.text() == stored.content
    [completed] = run.events("completed")
    assert completed["content"] == stored.content
    # It resumed where the text it had received ended (deltas may have reached it after the one we broke at),
    # counted in code points; a count of UTF-16 units would have skipped text.
    kinds = [line["event"] for line in run.lines]
    assert "resumed" in kinds, "the stream was not broken before the reply ended"
    resumed = run.lines[kinds.index("resumed")]
    received = "".join(line.get("text", "") for line in run.lines[: kinds.index("resumed")])
    assert received.startswith(broken_at) and EMOJI in received and len(received) < len(stored.content)
    assert resumed["offset"] == len(received) != resumed["utf16Length"] == utf16_length(received)


@pytest.mark.e2e
async def test_a_reply_continued_after_its_server_crashed_rewinds_what_was_never_stored(
    tmp_path: Path, chat_node: Any
) -> None:
    """The server is SIGKILLed mid-reply and started again: it continues the reply from the text it had stored,
    which is short of what the client received (200 tokens/s for 2.5 s, stored every 250 ms). The client resumes
    with the generation it read, gets a rewind to the stored end (in code points, emoji before it) and ends with
    exactly the stored reply."""
    port = free_port()
    database = tmp_path / "chat.db"
    env = {
        "CHAT_DATABASE_URL": f"sqlite+aiosqlite:///{database}",
        "CHAT_LISTEN": f"127.0.0.1:{port}",
        "CHAT_LLM_PROVIDER": "fake",
        "CHAT_FAKE_TOKENS_PER_SECOND": "200",
        "CHAT_FAKE_REPLY_TOKENS": "500",
        "CHAT_FLUSH_INTERVAL_MS": "250",
        "CHAT_REPLICA_ID": "node-restart-test",
    }
    await asyncio.to_thread(command, "migrate", env=env)
    key = (await asyncio.to_thread(command, "keys", "create", "--user", "alice", env=env)).strip().splitlines()[-1]
    server = Server(env=env, log=tmp_path / "server.log")
    await asyncio.to_thread(server.start)
    try:
        # Patient: the client keeps resuming (backoff up to 2 s) while the server starts again.
        run = await chat_node(f"127.0.0.1:{port}", key, "--attempts", "40", "ask", "a very long story")
        async with asyncio.timeout(RUN_LIMIT):
            while (line := await run.next_line()) is not None:
                if line["event"] == "delta" and len(run.text()) > 1000:  # flushed 4 times or more
                    break
            server.signal(signal.SIGKILL)
            await asyncio.to_thread(server.wait)
            [started] = run.events("started")
            with sqlite3.connect(database) as db:
                [(stored_at_kill,)] = db.execute(
                    "SELECT content FROM messages WHERE id = ?", (started["messageId"],)
                ).fetchall()
            server = Server(env=env, log=tmp_path / "server.log")
            await asyncio.to_thread(server.start)
            assert await run.finish() == 0
    finally:
        server.stop()

    expected = "".join(scripted_tokens("a very long story", 500))
    [completed] = run.events("completed")
    assert completed["status"] == "MESSAGE_STATUS_COMPLETED" and completed["content"] == expected
    kinds = [line["event"] for line in run.lines]
    received = "".join(line.get("text", "") for line in run.lines[: kinds.index("resumed")])
    assert expected.startswith(stored_at_kill) and expected.startswith(received) and EMOJI in stored_at_kill
    # What a display following the events shows: deltas appended, rewinds cut back (by code points).
    shown = ""
    for line in run.lines:
        if line["event"] == "delta":
            assert line["offset"] == len(shown)
            shown += line["text"]
        elif line["event"] == "rewind":
            assert line["replaced"] == shown[line["offset"] :]
            shown = shown[: line["offset"]]
    assert shown == expected
    if len(received) > len(stored_at_kill):  # nearly always: a kill lands within a 5 ms token of a flush ~2% of runs
        [rewind] = run.events("rewind")
        assert rewind["offset"] == len(stored_at_kill) and rewind["generation"] == 2
        assert rewind["replaced"] == received[len(stored_at_kill) :]
        assert all(line["generation"] == 2 for line in run.lines[kinds.index("rewind") + 1 :] if "generation" in line)
    else:
        assert run.events("rewind") == []


async def test_resumes_a_finished_reply_from_a_code_point_offset(server: Replica, chat_node: Any) -> None:
    key = await server.key("alice")
    conversation = await server.conversation("alice")
    sent = await server.stub.SendMessage(
        pb.SendMessageRequest(conversation_id=conversation.conversation_id, content="tell me a story"),
        metadata=await server.auth("alice"),
    )
    content = sent.message.content
    offset = content.index(EMOJI) + 1  # just past the emoji: the UTF-16 offset is one more
    run = await chat_node(server.address, key, "resume", sent.message.message_id, "--offset", str(offset))
    async with asyncio.timeout(RUN_LIMIT):
        assert await run.finish() == 0

    assert run.events("delta")[0]["offset"] == offset
    assert run.text() == content[offset:]
    assert [c["content"] for c in run.events("completed")] == [content]


@pytest.mark.parametrize(
    ("args", "code", "field_violations"),
    [
        (("ask", "", "--conversation", "{conversation}"), "INVALID_ARGUMENT", ["content"]),
        (("ask", "hello", "--conversation", str(uuid.uuid4())), "NOT_FOUND", []),
        (("resume", str(uuid.uuid4())), "NOT_FOUND", []),
        (("ask", "hello", "--conversation", "not-a-uuid"), "INVALID_ARGUMENT", ["conversation_id"]),
    ],
)
async def test_decodes_the_error_details(
    server: Replica, chat_node: Any, args: tuple[str, ...], code: str, field_violations: list[str]
) -> None:
    conversation = await server.conversation("alice")
    args = tuple(a.format(conversation=conversation.conversation_id) for a in args)
    run = await chat_node(server.address, await server.key("alice"), *args)
    async with asyncio.timeout(RUN_LIMIT):
        assert await run.finish() == 1

    [error] = run.events("error")
    assert error["code"] == code and error["message"]
    assert error["errorInfo"]["domain"] == "chat-service" and error["errorInfo"]["reason"] == code
    violations = error.get("badRequest", {"fieldViolations": []})["fieldViolations"]
    assert [v["field"] for v in violations] == field_violations
    assert all(v["description"] for v in violations)
    assert "retryInfo" not in error and error["other"] == []


async def test_decodes_retry_info(sqlite_url: str, chat_node: Any) -> None:
    async with running_replica(settings_for(sqlite_url, rate_limit_per_minute=1)) as limited:
        # One request a minute: CreateConversation takes it, StreamReply is refused until the bucket refills.
        run = await chat_node(limited.address, await limited.key("alice"), "ask", "hello")
        async with asyncio.timeout(RUN_LIMIT):
            assert await run.finish() == 1

    [error] = run.events("error")
    assert error["code"] == "RESOURCE_EXHAUSTED" and error["errorInfo"]["reason"] == "RATE_LIMITED"
    delay = error["retryInfo"]["retryDelay"]
    assert 55 <= int(delay["seconds"]) + delay["nanos"] / 1e9 <= 60
    assert error["retryDelayMs"] == pytest.approx(int(delay["seconds"]) * 1000 + delay["nanos"] / 1e6)
    assert float(error["errorInfo"]["metadata"]["retryAfterSeconds"]) == pytest.approx(
        error["retryDelayMs"] / 1000, abs=1e-3
    )
