"""SIGKILL mid-reply, restart: the user message is intact and the reply INTERRUPTED with its partial text."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from chat.v1 import chat_pb2 as pb
from chat.v1 import chat_pb2_grpc
from service.llm.fake import scripted_tokens
from tests.e2e.process import BIN, Server, command, poll_until
from tests.net import free_port

pytestmark = pytest.mark.e2e


@pytest.fixture
def server(database_url: str, tmp_path: Path) -> Iterator[Server]:
    port = free_port()
    env = {
        "CHAT_DATABASE_URL": database_url,
        "CHAT_LISTEN": f"127.0.0.1:{port}",
        "CHAT_LLM_PROVIDER": "fake",
        "CHAT_FAKE_TOKENS_PER_SECOND": "40",
        "CHAT_FAKE_REPLY_TOKENS": "400",
        "CHAT_AUTO_MIGRATE": "true",
    }
    running = Server(env=env, log=tmp_path / "server.log")
    running.start()
    yield running
    running.stop()


def grpcurl(address: str, key: str, method: str, body: dict[str, object]) -> dict[str, object]:
    result = subprocess.run(
        [
            str(BIN / "grpcurl"),
            "-plaintext",
            "-H",
            f"authorization: Bearer {key}",
            "-d",
            json.dumps(body),
            address,
            f"chat.v1.ChatService/{method}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


async def test_sigkill_mid_reply_then_restart(server: Server, database_url: str) -> None:
    env = server.env
    address = env["CHAT_LISTEN"]
    key = command("keys", "create", "--user", "e2e", env=env).strip().splitlines()[-1]
    assert key.startswith("csk_")

    # grpcurl, as a user would: reflection tells it the schema.
    conversation = grpcurl(address, key, "CreateConversation", {"title": "crash test"})
    conversation_id = str(conversation["conversation"]["conversation_id"])  # type: ignore[index]

    auth = (("authorization", f"Bearer {key}"),)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        call = stub.StreamReply(
            pb.StreamReplyRequest(conversation_id=conversation_id, content="please crash", request_id="req-1"),
            metadata=auth,
        )
        started = (await call.read()).event.started
        received = ""
        while len(received) < 60:
            received += (await call.read()).event.delta.text

        async def flushed() -> bool:  # some text is in the database
            listed = await stub.ListMessages(pb.ListMessagesRequest(conversation_id=conversation_id), metadata=auth)
            return len(listed.messages) == 2 and bool(listed.messages[1].content)

        await poll_until(flushed, within=10, interval=0.05)
        server.signal(signal.SIGKILL)
        assert server.wait() == -signal.SIGKILL

    server.start()  # same address: the restarted replica continues what it left behind
    async with grpc.aio.insecure_channel(address) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        follow = stub.ResumeReply(pb.ResumeReplyRequest(message_id=started.assistant_message.message_id), metadata=auth)
        events = [response.event async for response in follow]
        listed = await stub.ListMessages(pb.ListMessagesRequest(conversation_id=conversation_id), metadata=auth)
    user, assistant = listed.messages
    assert (user.role, user.content, user.status) == (
        pb.ROLE_USER,
        "please crash",
        pb.MESSAGE_STATUS_COMPLETED,
    )
    assert user.message_id == started.user_message.message_id
    assert assistant.message_id == started.assistant_message.message_id
    # Continued from the stored text by the restarted replica, to the end the model would have written.
    full = "".join(scripted_tokens("please crash", 400))
    assert (assistant.status, assistant.content, assistant.continuations) == (pb.MESSAGE_STATUS_COMPLETED, full, 1)
    assert "".join(e.delta.text for e in events if e.HasField("delta")) == full
    # As stored; a listing adds where a message stands among its siblings, which a stream's messages leave out.
    for placed in ("sibling_count", "sibling_index", "previous_sibling_id", "next_sibling_id"):
        assistant.ClearField(placed)
    assert events[-1].completed.message == assistant

    # The conversation goes on after the crash (the interrupted reply no longer blocks it).
    reply = grpcurl(
        address,
        key,
        "SendMessage",
        {"conversation_id": conversation_id, "content": "again", "background": True},
    )
    assert reply["message"]["status"] == "MESSAGE_STATUS_STREAMING"  # type: ignore[index]
