"""The installed server killed (SIGKILL) mid-reply and started again: it continues the reply it left behind,
and the client resumes on its own, rewinding the text it had received that was never stored."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from chat.v1 import chat_pb2 as pb
from chat_client import ChatClient, RetryPolicy
from service.llm.fake import scripted_tokens
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
            shown = ""  # what a display following the events shows: deltas appended, rewinds cut back
            killed = False
            async for event in stream:
                if event.WhichOneof("event") == "rewind":
                    shown = shown[: event.rewind.offset]
                if event.WhichOneof("event") != "delta":
                    continue
                shown += event.delta.text
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
    assert stream.message is not None and stream.message.status == pb.MESSAGE_STATUS_COMPLETED
    assert stream.message.continuations == 1  # the restarted server continued it from the stored text
    assert stored.message_id == stream.message.message_id and stored.content == stream.message.content
    assert shown == stream.text == stored.content == "".join(scripted_tokens("a very long story", 400))
    # Whatever the client had received past the last flush was taken back and replaced, and it was told.
    assert all(stored.content.startswith(stream.text[: r.offset]) for r in stream.replaced)
