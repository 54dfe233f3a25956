"""`chat-service serve --workers 2`: two serving processes on one port, each a replica of its own; the kernel
spreads connections between them; a worker that dies is replaced while the other serves; SIGTERM stops all."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import grpc
import psutil
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from chat.v1 import chat_pb2 as pb
from chat.v1 import chat_pb2_grpc
from service.storage.tables import messages
from tests.e2e.conftest import ServerFactory
from tests.e2e.process import BIN, poll_until
from tests.e2e.test_faults import drain, mint_key
from tests.net import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.timeout(120)]
CONNECTIONS = 24  # all landing on one of two workers by chance: 2 in 2**23


async def lease_owners(database_url: str) -> set[str]:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            query = sa.select(messages.c.lease_owner).where(messages.c.status == "streaming")
            return {row.lease_owner for row in await conn.execute(query)}
    finally:
        await engine.dispose()


def workers_of(pid: int) -> list[psutil.Process]:
    return [p for p in psutil.Process(pid).children() if "serve" in " ".join(p.cmdline())]


async def test_two_workers_share_the_port_and_each_is_a_replica(servers: ServerFactory, postgres_database: str) -> None:
    port = free_port()
    server = servers(
        postgres_database,
        CHAT_LISTEN=f"127.0.0.1:{port}",
        CHAT_WORKERS="2",
        CHAT_REPLICA_ID="box",
        CHAT_FAKE_TOKENS_PER_SECOND="20",
        CHAT_FAKE_REPLY_TOKENS="200",
        CHAT_MAX_CONCURRENT_STREAMS="0",  # one user opens them all: not the limit under test
    )
    assert server.process is not None and server.process.stdout is not None
    second_ready = await asyncio.wait_for(asyncio.to_thread(server.process.stdout.readline), 30)
    assert "listening on" in second_ready  # the other worker serves too (the first said so to start())
    key = mint_key(server)
    auth = (("authorization", f"Bearer {key}"),)
    # A subchannel pool per channel: otherwise channels to one address share one connection.
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) for _ in range(CONNECTIONS)]
    try:
        calls = []
        for channel in channels:
            stub = chat_pb2_grpc.ChatServiceStub(channel)
            conversation = await stub.CreateConversation(pb.CreateConversationRequest(), metadata=auth)
            call = stub.StreamReply(
                pb.StreamReplyRequest(conversation_id=conversation.conversation.conversation_id, content="hi"),
                metadata=auth,
            )
            await call.read()  # started: the reply is stored, leased by the worker serving this connection
            calls.append(call)
        assert await lease_owners(postgres_database) == {"box/w0", "box/w1"}

        assert server.process is not None
        first, second = workers_of(server.process.pid)
        first.kill()  # a worker dies: the other serves on, and the supervisor starts a new one
        for call in calls:
            call.cancel()
        # A new connection: the kernel hands it to a worker that is listening (the dead one's socket is gone).
        channels.append(grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options))
        stub = chat_pb2_grpc.ChatServiceStub(channels[-1])
        conversation = await stub.CreateConversation(pb.CreateConversationRequest(), metadata=auth, wait_for_ready=True)
        async with asyncio.timeout(30):
            _, last, error = await drain(
                stub.StreamReply(
                    pb.StreamReplyRequest(conversation_id=conversation.conversation.conversation_id, content="more"),
                    metadata=auth,
                    wait_for_ready=True,
                )
            )
        assert error is None and last is not None and last.HasField("completed")
        supervisor = server.process.pid

        async def replaced() -> bool:
            pids = {p.pid for p in workers_of(supervisor)}
            return len(pids) == 2 and first.pid not in pids

        await poll_until(replaced, within=30, interval=0.1)

        server.signal(signal.SIGTERM)
        assert await asyncio.to_thread(server.wait, 30) == 0
        assert second.is_running() is False
    finally:
        for channel in channels:
            await channel.close()


async def test_workers_refuse_sqlite(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "chat-service"),
        "serve",
        "--workers",
        "2",
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--database-url",
        f"sqlite+aiosqlite:///{tmp_path / 'never.db'}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert b"--workers needs Postgres" in err and b"Traceback" not in err
