"""Faults a real deployment sees, each with real processes: a replica killed, Postgres restarted, the model
server dying, SIGTERM with replies in flight, and a client that stops reading."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chat.v1 import chat_pb2 as pb
from chat.v1 import chat_pb2_grpc
from service.llm.fake import scripted_tokens
from tests.conftest import REQUIRE_POSTGRES
from tests.e2e.postgres import PrivatePostgres
from tests.e2e.process import Server, command, poll_until
from tests.net import free_port

pytestmark = pytest.mark.e2e

ServerFactory = Callable[..., Server]


class Client:
    """A stub on a channel to one server, authenticated with a key minted through the CLI."""

    def __init__(self, server: Server, key: str) -> None:
        self.address = server.env["CHAT_LISTEN"]
        self.channel = grpc.aio.insecure_channel(self.address)
        self.stub = chat_pb2_grpc.ChatServiceStub(self.channel)
        self.auth = (("authorization", f"Bearer {key}"),)

    async def conversation(self) -> str:
        created = await self.stub.CreateConversation(pb.CreateConversationRequest(), metadata=self.auth)
        return created.conversation.conversation_id

    def stream(self, conversation_id: str, content: str) -> grpc.aio.UnaryStreamCall:
        return self.stub.StreamReply(
            pb.StreamReplyRequest(conversation_id=conversation_id, content=content), metadata=self.auth
        )

    def resume(self, message_id: str, offset: int = 0) -> grpc.aio.UnaryStreamCall:
        return self.stub.ResumeReply(pb.ResumeReplyRequest(message_id=message_id, offset=offset), metadata=self.auth)

    async def messages(self, conversation_id: str) -> list[pb.Message]:
        listed = await self.stub.ListMessages(
            pb.ListMessagesRequest(conversation_id=conversation_id), metadata=self.auth
        )
        return list(listed.messages)

    async def close(self) -> None:
        await self.channel.close()


def mint_key(server: Server, user: str = "faults") -> str:
    return command("keys", "create", "--user", user, env=server.env).strip().splitlines()[-1]


async def read_text(call: grpc.aio.UnaryStreamCall, at_least: int) -> str:
    text = ""
    while len(text) < at_least:
        text += (await call.read()).event.delta.text
    return text


async def drain(call: grpc.aio.UnaryStreamCall) -> tuple[str, pb.ReplyEvent | None, grpc.aio.AioRpcError | None]:
    """Read a stream to its end: (delta text, last event, error if it ended with a non-OK status)."""
    text, last = "", None
    try:
        while (response := await call.read()) is not grpc.aio.EOF:
            last = response.event
            text += response.event.delta.text if response.event.HasField("delta") else ""
    except grpc.aio.AioRpcError as error:
        return text, last, error
    return text, last, None


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    # Not under tmp_path: pytest makes that private to root, and the server runs as the postgres user.
    root = Path(tempfile.mkdtemp(prefix="chat-test-pg-"))
    try:
        server = PrivatePostgres(root)
    except (FileNotFoundError, subprocess.CalledProcessError) as error:
        if REQUIRE_POSTGRES:
            pytest.fail(f"a private PostgreSQL server is required (CHAT_TEST_REQUIRE_POSTGRES=1): {error}")
        pytest.skip(f"cannot run a private PostgreSQL server: {error}")
    server.start()
    yield server
    server.destroy()


@pytest.mark.postgres
async def test_sigkill_of_the_owner_another_replica_serves_the_partial_text(
    servers: ServerFactory, postgres_database: str
) -> None:
    # Continuing turned off: the fallback (a model that cannot continue, or too many takeovers). With it on, see
    # tests/e2e/test_fencing.py: the reply is finished by the surviving replica.
    a = servers(postgres_database, CHAT_LEASE_SECONDS="2", CHAT_MAX_CONTINUATIONS="0")
    b = servers(postgres_database, CHAT_LEASE_SECONDS="2", CHAT_MAX_CONTINUATIONS="0")
    key = mint_key(a)
    on_a, on_b = Client(a, key), Client(b, key)
    try:
        conversation_id = await on_a.conversation()
        call = on_a.stream(conversation_id, "owner will die")
        started = (await call.read()).event.started
        received = await read_text(call, 40)
        await read_text(on_b.resume(started.assistant_message.message_id), 1)  # some text is stored
        a.signal(signal.SIGKILL)
        assert a.wait() == -signal.SIGKILL

        async with asyncio.timeout(20):
            text, last, error = await drain(on_b.resume(started.assistant_message.message_id))
        assert error is None
        final = last.completed.message  # type: ignore[union-attr]
        assert final.status == pb.MESSAGE_STATUS_INTERRUPTED
        assert text == final.content and final.content  # the partial text, served by B
        full = "".join(scripted_tokens("owner will die", 200))
        assert full.startswith(final.content) and len(final.content) < len(full)
        assert received[: len(final.content)] == final.content[: len(received)]
        user, assistant = await on_b.messages(conversation_id)
        assert user.content == "owner will die" and assistant.status == pb.MESSAGE_STATUS_INTERRUPTED
    finally:
        await on_a.close()
        await on_b.close()


async def test_postgres_restarted_mid_reply(servers: ServerFactory, private_postgres: PrivatePostgres) -> None:
    server = servers(private_postgres.url, CHAT_FAKE_TOKENS_PER_SECOND="20", CHAT_FAKE_REPLY_TOKENS="100")
    client = Client(server, mint_key(server))
    try:
        conversation_id = await client.conversation()
        call = client.stream(conversation_id, "survive the database")
        started = (await call.read()).event.started
        received = await read_text(call, 10)

        private_postgres.stop()
        # During the outage: the reply keeps streaming from memory; RPCs needing the database are UNAVAILABLE.
        received += await read_text(call, len(received) + 20)
        with pytest.raises(grpc.aio.AioRpcError) as outage:
            await client.messages(conversation_id)
        assert outage.value.code() == grpc.StatusCode.UNAVAILABLE
        await asyncio.sleep(1.5)
        private_postgres.start()

        async with asyncio.timeout(30):
            rest, last, error = await drain(call)
        assert error is None
        final = last.completed.message  # type: ignore[union-attr]
        expected = "".join(scripted_tokens("survive the database", 100))
        assert received + rest == final.content == expected  # nothing lost
        assert final.status == pb.MESSAGE_STATUS_COMPLETED

        async def stored_messages() -> list[pb.Message] | None:
            try:
                return await client.messages(conversation_id)
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE:  # only "not back yet" is acceptable
                    raise
                return None

        stored = await poll_until(stored_messages, within=20, interval=0.2)  # recovered without a restart
        assert [m.message_id for m in stored] == [started.user_message.message_id, final.message_id]
        assert (stored[1].status, stored[1].content) == (pb.MESSAGE_STATUS_COMPLETED, expected)
        _, again, error = await drain(client.stream(conversation_id, "and again"))
        assert error is None and again.completed.message.status == pb.MESSAGE_STATUS_COMPLETED  # type: ignore[union-attr]
    finally:
        await client.close()


@pytest.fixture
def ollama_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.wire.ollama_server",
            "--port",
            str(port),
            "--tokens-per-second",
            "20",
            "--reply-tokens",
            "200",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    assert process.stdout is not None
    assert "listening on" in process.stdout.readline()
    yield process, f"http://127.0.0.1:{port}"
    if process.poll() is None:
        process.kill()
    process.wait(10)
    process.stdout.close()


async def test_the_model_server_dying_mid_stream(
    servers: ServerFactory, database_url: str, ollama_process: tuple[subprocess.Popen[str], str]
) -> None:
    model_server, url = ollama_process
    server = servers(database_url, CHAT_LLM_PROVIDER="ollama", CHAT_LLM_URL=url, CHAT_DEFAULT_MODEL="llama3.2")
    client = Client(server, mint_key(server))
    try:
        conversation_id = await client.conversation()
        call = client.stream(conversation_id, "hello")
        started = (await call.read()).event.started
        received = await read_text(call, 20)
        model_server.kill()

        async with asyncio.timeout(20):
            rest, _, error = await drain(call)
        assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE
        _, assistant = await client.messages(conversation_id)
        assert assistant.message_id == started.assistant_message.message_id
        assert assistant.status == pb.MESSAGE_STATUS_FAILED
        assert assistant.content == received + rest and assistant.content
        assert assistant.error_message
    finally:
        await client.close()


async def health_of(address: str) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        return int(response.status)


async def test_sigterm_lets_short_replies_finish_and_health_turns_first(
    servers: ServerFactory, database_url: str
) -> None:
    server = servers(
        database_url, CHAT_FAKE_REPLY_TOKENS="40", CHAT_SHUTDOWN_GRACE_SECONDS="5", CHAT_SHUTDOWN_DRAIN_SECONDS="1"
    )
    client = Client(server, mint_key(server))
    try:
        conversation_id = await client.conversation()
        call = client.stream(conversation_id, "finish me")
        await read_text(call, 5)
        assert await health_of(client.address) == health_pb2.HealthCheckResponse.SERVING
        server.signal(signal.SIGTERM)

        async def not_serving() -> bool:
            return await health_of(client.address) == health_pb2.HealthCheckResponse.NOT_SERVING

        await poll_until(not_serving, within=5, interval=0.05)
        async with asyncio.timeout(15):
            _, last, error = await drain(call)
        assert error is None
        assert last.completed.message.status == pb.MESSAGE_STATUS_COMPLETED  # type: ignore[union-attr]
        assert last.completed.message.content == "".join(scripted_tokens("finish me", 40))  # type: ignore[union-attr]
        assert server.wait(timeout=20) == 0
    finally:
        await client.close()


async def test_sigterm_ends_long_replies_interrupted_after_the_grace(servers: ServerFactory, database_url: str) -> None:
    server = servers(database_url, CHAT_FAKE_REPLY_TOKENS="400", CHAT_SHUTDOWN_GRACE_SECONDS="0.5")
    client = Client(server, mint_key(server))
    try:
        conversation_id = await client.conversation()
        call = client.stream(conversation_id, "too long to finish")
        received = await read_text(call, 5)
        server.signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            rest, last, error = await drain(call)
        assert error is None  # the stream still gets its terminal event
        final = last.completed.message  # type: ignore[union-attr]
        assert final.status == pb.MESSAGE_STATUS_INTERRUPTED
        assert final.content == received + rest
        assert server.wait(timeout=20) == 0
        server.start()
        restarted = Client(server, mint_key(server))
        try:
            _, assistant = await restarted.messages(conversation_id)
        finally:
            await restarted.close()
        assert (assistant.status, assistant.content) == (pb.MESSAGE_STATUS_INTERRUPTED, final.content)
    finally:
        await client.close()


async def test_a_client_that_stops_reading_costs_one_buffer_and_slows_no_one(
    servers: ServerFactory, database_url: str
) -> None:
    # An instant model and a long reply: a per-token queue would hold 100k events for the stalled reader.
    server = servers(
        database_url, CHAT_FAKE_TOKENS_PER_SECOND="0", CHAT_FAKE_REPLY_TOKENS="100000", CHAT_MAX_REPLY_TOKENS="100000"
    )
    key = mint_key(server)
    process = psutil.Process(server.process.pid)  # type: ignore[union-attr]
    stalled, reader = Client(server, key), Client(server, key)
    try:
        warm = await reader.conversation()
        await drain(reader.stream(warm, "warm up"))  # allocate what a first reply allocates
        baseline = process.memory_info().rss

        stalled_conversation = await stalled.conversation()
        call = stalled.stream(stalled_conversation, "I will not read")
        started = (await call.read()).event.started  # then never reads again

        async def stored_in_full() -> bool:
            return (await reader.messages(stalled_conversation))[-1].status != pb.MESSAGE_STATUS_STREAMING

        await poll_until(stored_in_full, within=30, interval=0.1)  # the generation completes regardless

        other = await reader.conversation()
        async with asyncio.timeout(30):
            text, last, error = await drain(reader.stream(other, "meanwhile"))
        assert error is None and text == last.completed.message.content  # type: ignore[union-attr]
        growth = process.memory_info().rss - baseline
        reply_bytes = len(text.encode())
        # The reply itself (kept in memory while it is being read, as text and as its stored copy) plus
        # HTTP/2 windows: a small multiple of the reply, never one object per token.
        assert growth < 8 * reply_bytes + 32 * 2**20, (growth, reply_bytes)

        async with asyncio.timeout(30):
            rest, last, error = await drain(call)  # it reads at last: everything, exactly once
        assert error is None
        stored = (await reader.messages(stalled_conversation))[-1]
        assert stored.message_id == started.assistant_message.message_id
        assert rest == stored.content == last.completed.message.content  # type: ignore[union-attr]
    finally:
        await stalled.close()
        await reader.close()


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Child processes talk to 127.0.0.1 only; a proxy setting must not reroute them.
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "grpc_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
