"""The servers the benchmark compares, each run in its own process: `python -m tests.bench.servers KIND ...`.

- `raw`: the baseline — a trivial grpc.aio server answering ChatService's methods with pre-built messages
  (StreamReply streams time-stamped deltas at the requested pace, or one pre-built message as fast as it can).
- `service`: chat-service itself (the real App, auth, interceptors, storage), with the clock-stamping fake model.
- `relay`: the floor of the paced path — raw grpc.aio on uvloop relaying an Ollama-wire upstream read with aiohttp
  (`--upstream URL`), one delta per streamed line: no auth, no storage, no reply outliving its call.
- `naive`: the design the earlier systems used — the generation runs inside the RPC and the partial reply is
  written to the database every `--every` tokens (1: per token).

A request's content says what to generate: `"rate=<tokens/s> tokens=<n>"`. Each server also answers
`/bench.v1.Stats/Get` with JSON counters of database writes (rows written to `messages`, commits).
Prints `READY <port> <api key>` once serving.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import grpc
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from chat.v1 import chat_pb2 as pb
from chat.v1 import chat_pb2_grpc
from service.app import App, build
from service.settings import Settings
from service.storage import migrate, tables
from service.storage.database import Database
from tests.bench.clock_provider import MODEL, ClockProvider, paced

STATS_METHOD = "/bench.v1.Stats/Get"


def parse_request(content: str) -> tuple[float, int]:
    fields = dict(part.split("=", 1) for part in content.split())
    return float(fields.get("rate", "0")), int(fields.get("tokens", "1"))


class WriteCounter:
    """Counts rows written to `messages` and commits, from SQLAlchemy's engine events."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.rows = 0
        self.commits = 0
        sa.event.listen(engine.sync_engine, "before_cursor_execute", self._on_execute)
        sa.event.listen(engine.sync_engine, "commit", self._on_commit)

    def _on_execute(
        self, _conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, executemany: bool
    ) -> None:
        head = statement.lstrip()[:40].upper()
        if head.startswith(("INSERT INTO MESSAGES", "UPDATE MESSAGES")):
            self.rows += len(parameters) if executemany else 1

    def _on_commit(self, _conn: Any) -> None:
        self.commits += 1

    def snapshot(self) -> dict[str, int]:
        return {"rows_written": self.rows, "commits": self.commits}


def stats_handler(counter: WriteCounter | None) -> grpc.GenericRpcHandler:
    async def get(_request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
        return json.dumps(counter.snapshot() if counter else {"rows_written": 0, "commits": 0}).encode()

    return grpc.method_handlers_generic_handler("bench.v1.Stats", {"Get": grpc.unary_unary_rpc_method_handler(get)})


def now() -> datetime:
    return datetime.now(UTC)


def delta(text: str, offset: int) -> pb.StreamReplyResponse:
    return pb.StreamReplyResponse(event=pb.ReplyEvent(delta=pb.ReplyDelta(text=text, offset=offset)))


def chat_servicer(**methods: Any) -> chat_pb2_grpc.ChatServiceServicer:
    """The generated ChatService servicer with `methods` in place; the others answer UNIMPLEMENTED."""
    servicer = chat_pb2_grpc.ChatServiceServicer()
    for name, method in methods.items():
        setattr(servicer, name, method)
    return servicer


# --- raw baseline


def raw_servicer() -> chat_pb2_grpc.ChatServiceServicer:
    conversation = pb.Conversation(conversation_id=str(uuid.uuid4()), title="raw", model=MODEL)
    created = pb.CreateConversationResponse(conversation=conversation)
    got = pb.GetConversationResponse(conversation=conversation)
    message = pb.Message(message_id=str(uuid.uuid4()), role=pb.ROLE_ASSISTANT)
    started = pb.StreamReplyResponse(event=pb.ReplyEvent(started=pb.ReplyStarted(assistant_message=message)))
    completed = pb.StreamReplyResponse(event=pb.ReplyEvent(completed=pb.ReplyCompleted(message=message)))
    prebuilt = delta("1700000000.000000;", 0)

    async def create(_request: pb.CreateConversationRequest, _context: Any) -> pb.CreateConversationResponse:
        return created

    async def get(_request: pb.GetConversationRequest, _context: Any) -> pb.GetConversationResponse:
        return got

    async def stream(request: pb.StreamReplyRequest, _context: Any) -> AsyncIterator[pb.StreamReplyResponse]:
        rate, count = parse_request(request.content)
        yield started
        if rate:
            offset = 0
            async for token in paced(count, 1.0 / rate):
                yield delta(token, offset)
                offset += len(token)
        else:  # as fast as it goes: the same pre-built message over and over
            for _ in range(count):
                yield prebuilt
        yield completed

    return chat_servicer(CreateConversation=create, GetConversation=get, StreamReply=stream)


# --- the relay floor: what the paced path costs with nothing but gRPC, HTTP and JSON


def relay_servicer(session: Any, upstream: str) -> chat_pb2_grpc.ChatServiceServicer:
    import orjson

    conversation = pb.Conversation(conversation_id=str(uuid.uuid4()), title="relay", model=MODEL)
    created = pb.CreateConversationResponse(conversation=conversation)
    message = pb.Message(message_id=str(uuid.uuid4()), role=pb.ROLE_ASSISTANT)
    started = pb.StreamReplyResponse(event=pb.ReplyEvent(started=pb.ReplyStarted(assistant_message=message)))
    completed = pb.StreamReplyResponse(event=pb.ReplyEvent(completed=pb.ReplyCompleted(message=message)))

    async def create(_request: pb.CreateConversationRequest, _context: Any) -> pb.CreateConversationResponse:
        return created

    async def stream(request: pb.StreamReplyRequest, _context: Any) -> AsyncIterator[pb.StreamReplyResponse]:
        body = {"model": MODEL, "messages": [{"role": "user", "content": request.content}], "stream": True}
        yield started
        offset = 0
        async with session.post(upstream + "/api/chat", data=orjson.dumps(body)) as response:
            async for line in response.content:
                chunk = orjson.loads(line)
                if chunk.get("done"):
                    continue  # read on to the end of the body: the connection goes back to the pool
                text = chunk["message"]["content"]
                yield delta(text, offset)
                offset += len(text)
        yield completed

    return chat_servicer(CreateConversation=create, StreamReply=stream)


# --- the naive design: generation inside the RPC, a database write every `every` tokens


def naive_servicer(engine: AsyncEngine, every: int) -> chat_pb2_grpc.ChatServiceServicer:
    messages, conversations = tables.messages, tables.conversations

    async def create(request: pb.CreateConversationRequest, _context: Any) -> pb.CreateConversationResponse:
        conversation_id, when = str(uuid.uuid4()), now()
        async with engine.begin() as conn:
            await conn.execute(
                conversations.insert().values(
                    id=conversation_id,
                    owner="bench",
                    title=request.title,
                    model=MODEL,
                    create_time=when,
                    update_time=when,
                )
            )
        return pb.CreateConversationResponse(conversation=pb.Conversation(conversation_id=conversation_id))

    async def stream(request: pb.StreamReplyRequest, _context: Any) -> AsyncIterator[pb.StreamReplyResponse]:
        rate, count = parse_request(request.content)
        user_id, reply_id, when = str(uuid.uuid4()), str(uuid.uuid4()), now()
        common = {"conversation_id": request.conversation_id, "owner": "bench", "create_time": when}
        async with engine.begin() as conn:
            await conn.execute(
                messages.insert(),
                [
                    {
                        **common,
                        "id": user_id,
                        "role": "user",
                        "content": request.content,
                        "status": "completed",
                        "update_time": when,
                    },
                    {
                        **common,
                        "id": reply_id,
                        "role": "assistant",
                        "content": "",
                        "status": "streaming",
                        "update_time": when,
                    },
                ],
            )
        reply = pb.Message(message_id=reply_id, role=pb.ROLE_ASSISTANT)
        yield pb.StreamReplyResponse(event=pb.ReplyEvent(started=pb.ReplyStarted(assistant_message=reply)))
        text, unsaved = "", 0
        row = messages.update().where(messages.c.id == reply_id)
        async for token in paced(count, 1.0 / rate if rate else 0.0):
            yield delta(token, len(text))
            text += token
            unsaved += 1
            if unsaved >= every:
                async with engine.begin() as conn:
                    await conn.execute(row.values(content=text, update_time=now()))
                unsaved = 0
        async with engine.begin() as conn:
            await conn.execute(row.values(content=text, status="completed", update_time=now()))
        yield pb.StreamReplyResponse(event=pb.ReplyEvent(completed=pb.ReplyCompleted(message=reply)))

    return chat_servicer(CreateConversation=create, StreamReply=stream)


# --- the unary baseline: raw grpc.aio + asyncpg running the SQL the service runs


def rawsql_servicer(pool: Any) -> chat_pb2_grpc.ChatServiceServicer:
    insert = (
        "INSERT INTO conversations (id, owner, title, model, persona, system_prompt, create_time, update_time) "
        "VALUES ($1, $2, $3, $4, '', '', $5, $5)"
    )
    select = (
        "SELECT id, owner, title, model, persona, system_prompt, create_time, update_time "
        "FROM conversations WHERE id = $1"
    )

    async def create(request: pb.CreateConversationRequest, _context: Any) -> pb.CreateConversationResponse:
        conversation_id, when = str(uuid.uuid4()), now()
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(insert, conversation_id, "bench", request.title or "New conversation", MODEL, when)
        return pb.CreateConversationResponse(
            conversation=pb.Conversation(conversation_id=conversation_id, title=request.title, model=MODEL)
        )

    async def get(request: pb.GetConversationRequest, _context: Any) -> pb.GetConversationResponse:
        async with pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(select, request.conversation_id)
        return pb.GetConversationResponse(
            conversation=pb.Conversation(conversation_id=row["id"], title=row["title"], model=row["model"])
        )

    return chat_servicer(CreateConversation=create, GetConversation=get)


# --- running one


def bench_settings(database_url: str, *, replica_id: str) -> Settings:
    """chat-service as the benchmarks serve it: the fake provider (a bench's own model passed to `build`), long
    replies allowed, and no per-user limits (one bench user opens up to 1,000 streams: capacity is measured)."""
    return Settings(
        database_url=database_url,
        listen="127.0.0.1:0",
        llm_provider="fake",
        default_model=MODEL,
        max_reply_tokens=1_000_000,
        auto_migrate=True,
        replica_id=replica_id,
        log_level=os.environ.get("CHAT_LOG_LEVEL", "WARNING"),
        shutdown_grace_seconds=1.0,
        rate_limit_per_minute=0,
        max_concurrent_streams=0,
    )


async def run(kind: str, database_url: str, every: int, upstream: str = "") -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    key = ""
    if kind == "service":
        settings = bench_settings(database_url, replica_id="bench")
        app = App(build(settings, provider=RequestPaced()))
        counter = WriteCounter(app.deps.database.engine)
        app.server.add_generic_rpc_handlers((stats_handler(counter),))
        port = await app.start()
        _, key = await app.deps.use_cases.api_keys.create("bench")
        print(f"READY {port} {key}", flush=True)
        await stop.wait()
        await app.stop(grace=1.0)
        return
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    engine = None
    pool = None
    session = None
    if kind == "relay":
        import aiohttp

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        chat_pb2_grpc.add_ChatServiceServicer_to_server(relay_servicer(session, upstream), server)
    elif kind == "rawsql":
        import asyncpg

        dsn = database_url.replace("postgresql+asyncpg://", "postgresql://")
        pool = await asyncpg.create_pool(dsn, min_size=10, max_size=10)
        chat_pb2_grpc.add_ChatServiceServicer_to_server(rawsql_servicer(pool), server)
    elif kind == "raw":
        chat_pb2_grpc.add_ChatServiceServicer_to_server(raw_servicer(), server)
        server.add_generic_rpc_handlers((stats_handler(None),))
    else:
        await asyncio.to_thread(migrate.upgrade, database_url)
        database = Database(database_url, pool_size=20)
        engine = database.engine
        chat_pb2_grpc.add_ChatServiceServicer_to_server(naive_servicer(engine, every), server)
        server.add_generic_rpc_handlers((stats_handler(WriteCounter(engine)),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"READY {port} -", flush=True)
    await stop.wait()
    await server.stop(1.0)
    if engine is not None:
        await engine.dispose()
    if pool is not None:
        await pool.close()
    if session is not None:
        await session.close()


class RequestPaced(ClockProvider):
    """The clock model, paced as each request's content asks."""

    def __init__(self) -> None:
        super().__init__(tokens_per_second=0, reply_tokens=0)

    async def stream(self, prompt: Any) -> AsyncIterator[Any]:
        last_user = prompt.turns[-1].content
        rate, count = parse_request(last_user)
        inner = ClockProvider(tokens_per_second=rate, reply_tokens=count)
        async for item in inner.stream(prompt):
            yield item


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["raw", "service", "naive", "rawsql", "relay"])
    parser.add_argument("--database", default="")
    parser.add_argument("--every", type=int, default=1)
    parser.add_argument("--upstream", default="", help="relay: the Ollama-wire server's base URL")
    args = parser.parse_args()
    if args.kind == "relay":  # on uvloop, as chat-service serves
        import uvloop

        uvloop.run(run(args.kind, args.database, args.every, args.upstream))
    else:
        asyncio.run(run(args.kind, args.database, args.every, args.upstream))


if __name__ == "__main__":
    main()
