"""Three replicas on one Postgres behind nginx (started from the shipped deploy/nginx template), with their
limits in Redis. 54 conversations talk through it at once with the client library while the replicas are
SIGKILLed one by one and restarted. The client library mends every break on its own (nginx reports a dead
replica as a reset stream, not UNAVAILABLE), every reply is continued to its end by a surviving replica,
every reply's stored text is what its client ends with, and a user's limits hold across the replicas."""

from __future__ import annotations

import asyncio
import json
import signal
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import jwt
import pytest

from chat.v1 import chat_pb2 as pb
from chat_client import ChatClient, ReplyStream, ResourceExhausted
from service.llm.fake import scripted_tokens
from tests.e2e.conftest import ServerFactory
from tests.e2e.nginx import Nginx, binary
from tests.e2e.process import Server, poll_until

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

CONVERSATIONS = 54
MIN_REPLIES = 2  # per conversation, and more until the last killed replica is back
REPLY_TOKENS = 60
TOKENS_PER_SECOND = 20  # a reply streams for 3 s
RATE_PER_MINUTE = 40  # a conversation makes ~2 calls per reply: far from it
MAX_STREAMS = 3  # one stream a conversation, plus a dead replica's until its TTL runs out
STREAM_TTL = 3.0
STREAM_DEADLINE = 40.0  # a reply stream (with its resumes) that has not ended by then is a failure
SECRET = "load-balancer-test-secret-of-more-than-32-bytes"


@dataclass
class Reply:
    content: str
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    text: str = ""  # what the stream ended with (deltas applied, rewinds cut back)
    message: pb.Message | None = None
    resumes: int = 0  # breaks the library mended on its own
    replaced: list[tuple[int, str]] = field(default_factory=list)  # delivered, then taken back by a rewind
    continuations: int = 0  # replicas that continued it after the one writing it died

    @property
    def full_text(self) -> str:
        return "".join(scripted_tokens(self.content, REPLY_TOKENS))


@dataclass
class Run:
    """What the conversations are doing, for the killer to time its kills."""

    streaming: int = 0  # reply streams that have delivered text and not ended
    ended: int = 0  # replies whose stream ended
    over: asyncio.Event = field(default_factory=asyncio.Event)  # every killed replica is back
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def update(self, *, streaming: int = 0, ended: int = 0) -> None:
        async with self.changed:
            self.streaming += streaming
            self.ended += ended
            self.changed.notify_all()

    async def until(self, *, ended: int = 0, streaming: int = 0) -> None:
        """Until `ended` replies have ended and `streaming` streams are delivering text."""
        async with self.changed:
            await self.changed.wait_for(lambda: self.ended >= ended and self.streaming >= streaming)


@dataclass
class Kill:
    streams_open: int
    seconds: float


def token(user: str) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256")


@pytest.fixture
def nginx_root() -> Iterator[Path]:
    if binary() is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light; .ci/run does)")
    root = Path(tempfile.mkdtemp(prefix="chat-test-nginx-"))
    yield root
    for path in sorted(root.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    root.rmdir()


@pytest.fixture
async def cluster(
    servers: ServerFactory, postgres_database: str, redis_server: str, redis_prefix: str, nginx_root: Path
) -> AsyncIterator[tuple[list[Server], Nginx]]:
    env = {
        "CHAT_AUTO_MIGRATE": "false",  # postgres_database is migrated
        "CHAT_JWT_SECRET": SECRET,
        "CHAT_FAKE_TOKENS_PER_SECOND": str(TOKENS_PER_SECOND),
        "CHAT_FAKE_REPLY_TOKENS": str(REPLY_TOKENS),
        "CHAT_LEASE_SECONDS": "2",
        "CHAT_REDIS_URL": redis_server,
        "CHAT_REDIS_KEY_PREFIX": redis_prefix,
        "CHAT_REDIS_STREAM_TTL_SECONDS": str(STREAM_TTL),
        "CHAT_RATE_LIMIT_PER_MINUTE": str(RATE_PER_MINUTE),
        "CHAT_MAX_CONCURRENT_STREAMS": str(MAX_STREAMS),
    }
    replicas = [servers(postgres_database, **env) for _ in range(3)]
    proxy = Nginx(nginx_root, [r.env["CHAT_LISTEN"] for r in replicas])
    proxy.start()
    try:
        yield replicas, proxy
    finally:
        proxy.stop()


async def test_conversations_through_nginx_survive_replicas_killed_one_by_one(
    cluster: tuple[list[Server], Nginx],
) -> None:
    replicas, proxy = cluster
    clients = [ChatClient(proxy.address, jwt=token(f"talker-{i}")) for i in range(CONVERSATIONS)]
    run = Run()
    try:
        async with asyncio.timeout(80):
            talks = [asyncio.create_task(converse(client, i, run)) for i, client in enumerate(clients)]
            killer = asyncio.create_task(kill_one_by_one(replicas, run))
            await asyncio.wait([killer, *talks], return_when=asyncio.FIRST_EXCEPTION)
            killer.cancel()  # done, or a conversation failed: no more kills then
            outcomes = await asyncio.gather(*talks, return_exceptions=True)
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        assert failures == [], failures
        kills = killer.result()
        conversations = [o for o in outcomes if not isinstance(o, BaseException)]
        for client, (conversation_id, replies) in zip(clients, conversations, strict=True):
            assert_stored_as_delivered(await stored(client, conversation_id), replies)
    finally:
        for client in clients:
            await client.close()

    replies = [reply for _, conversation in conversations for reply in conversation]
    assert all(kill.streams_open >= CONVERSATIONS // 2 for kill in kills), kills  # each kill hit open streams
    assert sum(reply.resumes for reply in replies) >= len(kills)  # the library resumed the broken streams
    assert any(reply.continuations for reply in replies)  # and the survivors continued the killed replicas' replies

    await assert_limits_hold_across_replicas(proxy, replicas)


async def converse(client: ChatClient, index: int, run: Run) -> tuple[str, list[Reply]]:
    conversation_id = (await client.create_conversation(title=f"conversation {index}")).conversation_id
    replies: list[Reply] = []
    while len(replies) < MIN_REPLIES or not run.over.is_set():
        reply = Reply(f"conversation {index}, reply {len(replies)}")
        async with asyncio.timeout(STREAM_DEADLINE):
            await follow(client, conversation_id, reply, run)
        replies.append(reply)
    return conversation_id, replies


async def follow(client: ChatClient, conversation_id: str, reply: Reply, run: Run) -> None:
    """Read the reply to its end: the library resumes every break."""
    stream = client.stream_reply(conversation_id, reply.content, request_id=reply.request_id)
    await read(stream, run)
    reply.message, reply.text, reply.resumes = stream.message, stream.text, stream.resumes
    reply.replaced = [(r.offset, r.text) for r in stream.replaced]
    reply.continuations = stream.message.continuations if stream.message else 0
    await run.update(ended=1)


async def read(stream: ReplyStream, run: Run) -> None:
    streaming = False
    try:
        async for event in stream:
            if event.HasField("delta") and not streaming:
                streaming = True
                await run.update(streaming=1)
    finally:
        if streaming:
            await run.update(streaming=-1)


async def kill_one_by_one(replicas: list[Server], run: Run) -> list[Kill]:
    """SIGKILL each replica while at least half the conversations are mid-reply, restart it, and let them
    finish a round of replies before the next one."""
    kills = []
    try:
        for replica in replicas:
            await run.until(ended=run.ended + CONVERSATIONS // 2)
            await run.until(streaming=CONVERSATIONS // 2)
            started = time.monotonic()
            open_now = run.streaming
            replica.signal(signal.SIGKILL)
            assert await asyncio.to_thread(replica.wait) == -signal.SIGKILL
            await asyncio.to_thread(replica.start)  # same port, same replica id
            kills.append(Kill(open_now, time.monotonic() - started))
    finally:
        run.over.set()  # the conversations may end
    return kills


async def stored(client: ChatClient, conversation_id: str) -> list[pb.Message]:
    return [message async for message in client.iter_messages(conversation_id)]


def assert_stored_as_delivered(messages: list[pb.Message], replies: list[Reply]) -> None:
    """Each reply stored once, after its one user message, whole, with the text its client ended with."""
    assert [m.role for m in messages] == [pb.ROLE_USER, pb.ROLE_ASSISTANT] * len(replies)
    for (user, assistant), reply in zip(zip(messages[::2], messages[1::2], strict=True), replies, strict=True):
        assert reply.message is not None
        assert user.content == reply.content
        assert assistant.message_id == reply.message.message_id
        assert (assistant.status, assistant.content) == (reply.message.status, reply.message.content)
        # A killed replica's reply was continued by a survivor (or by itself, restarted), never left INTERRUPTED.
        assert assistant.status == pb.MESSAGE_STATUS_COMPLETED, pb.MessageStatus.Name(assistant.status)
        assert reply.text == assistant.content == reply.full_text  # nothing lost, nothing twice
        assert assistant.continuations == reply.continuations
        # What a rewind took back was text the dead replica had sent (the fake model says the same each time).
        assert all(reply.full_text[offset : offset + len(text)] == text for offset, text in reply.replaced)


async def assert_limits_hold_across_replicas(proxy: Nginx, replicas: list[Server]) -> None:
    """One user's calls spread over the replicas by nginx still get the limits once, not once per replica."""
    async with ChatClient(proxy.address, jwt=token("rate-probe")) as client:
        started = time.monotonic()
        results = await asyncio.gather(
            *(client.list_conversations() for _ in range(RATE_PER_MINUTE + 10)), return_exceptions=True
        )
        elapsed = time.monotonic() - started
    refused = [r for r in results if isinstance(r, ResourceExhausted)]
    assert all(isinstance(r, ResourceExhausted) or not isinstance(r, BaseException) for r in results), results
    refilled = int(elapsed * RATE_PER_MINUTE / 60)  # one request back every 60/RATE s
    assert RATE_PER_MINUTE <= len(results) - len(refused) <= RATE_PER_MINUTE + refilled
    assert all(r.retry_delay and r.retry_delay > 0 for r in refused)
    assert len({replica for replica, code in calls(replicas, "rate-probe", "ListConversations") if code == "OK"}) >= 2

    async with ChatClient(proxy.address, jwt=token("stream-probe")) as client:
        conversations = [(await client.create_conversation()).conversation_id for _ in range(MAX_STREAMS + 1)]
        streams = [aiter(client.stream_reply(c, "hold a slot")) for c in conversations]
        for stream in streams[:MAX_STREAMS]:
            assert (await anext(stream)).HasField("started")
        with pytest.raises(ResourceExhausted):
            await anext(streams[MAX_STREAMS])
        for stream in streams[:MAX_STREAMS]:
            await stream.aclose()  # type: ignore[attr-defined]

    async def streams_logged() -> bool:  # a stream's access-log line is written as it ends
        return len(calls(replicas, "stream-probe", "StreamReply")) >= MAX_STREAMS + 1

    await poll_until(streams_logged, within=10, interval=0.05)
    assert len({replica for replica, _ in calls(replicas, "stream-probe", "StreamReply")}) >= 2


def calls(replicas: list[Server], user: str, method: str) -> list[tuple[int, str]]:
    """(replica index, status code) of each call of `user` to `method` in the replicas' access logs."""
    found = []
    for index, replica in enumerate(replicas):
        for line in replica.log.read_text().split("\n")[:-1]:  # not a line still being written
            entry = json.loads(line) if line.startswith("{") else {}
            if entry.get("event") == "rpc" and entry.get("user") == user and entry["method"].endswith(method):
                found.append((index, entry["code"]))
    return found
