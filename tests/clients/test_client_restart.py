"""The installed server killed (SIGKILL) mid-reply and started again: the client resumes on its own."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from chat.v1 import chat_pb2 as pb
from chat_client import ChatClient, RetryPolicy
from tests.e2e.process import Server, command
from tests.net import free_port

pytestmark = pytest.mark.e2e

# Enough patience for a process restart (imports, migrations): about 15 s of attempts.
PATIENT = RetryPolicy(attempts=40, initial_backoff=0.05, max_backoff=0.5)


async def test_a_reply_stream_survives_a_server_crash_and_restart(tmp_path: Path) -> None:
    port = free_port()
    env = {
        "CHAT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}",
        "CHAT_LISTEN": f"127.0.0.1:{port}",
        "CHAT_LLM_PROVIDER": "fake",
        "CHAT_FAKE_TOKENS_PER_SECOND": "40",
        "CHAT_FAKE_REPLY_TOKENS": "400",
        "CHAT_REPLICA_ID": "restart-test",
    }
    await asyncio.to_thread(command, "migrate", env=env)
    key = (await asyncio.to_thread(command, "keys", "create", "--user", "alice", env=env)).strip().splitlines()[-1]
    server = Server(env=env, log=tmp_path / "server.log")
    await asyncio.to_thread(server.start)
    try:
        async with ChatClient(f"127.0.0.1:{port}", api_key=key, retry=PATIENT) as client:
            conversation = await client.create_conversation()
            stream = client.stream_reply(conversation.conversation_id, "a very long story")
            texts: list[str] = []
            killed = False
            async for event in stream:
                if event.WhichOneof("event") != "delta":
                    continue
                texts.append(event.delta.text)
                if not killed and stream.offset > 80:
                    server.signal(signal.SIGKILL)
                    await asyncio.to_thread(server.wait)
                    server = Server(env=env, log=tmp_path / "server.log")
                    await asyncio.to_thread(server.start)
                    killed = True
            stored = [m async for m in client.iter_messages(conversation.conversation_id)][-1]
    finally:
        server.stop()
    assert killed and stream.resumes >= 1
    assert stream.message is not None and stream.message.status == pb.MESSAGE_STATUS_INTERRUPTED
    assert stored.message_id == stream.message.message_id and stored.content == stream.message.content
    # The restart kept what had been flushed; the client saw that, and at most one flush interval more.
    assert "".join(texts) == stream.text and stream.text.startswith(stored.content) and stored.content
