"""What one reply and one replica cost the database, and where one Postgres primary stops: the inputs of the
README's "Internet scale" arithmetic.

    python -m tests.bench.scale [--streams 20] [--tokens 60] [--rate 20] [--batch 200] [--pgbench-seconds 5]
                                [--per-replica 200] [--no-ceiling] [--reuse]

1. Per reply, measured: `--streams` replies (second turns) of `--tokens` tokens at `--rate` tokens/s, started
   over one second, through chat-service (the real App, `serve` below) on a private Postgres database, the model
   being the in-process clock model. Counted: SQL statements and commits by kind (SQLAlchemy engine events in
   the served process), rows from pg_stat_user_tables of the private database, the WAL its records took
   (pg_walinspect: records of its relations and the commit records of its transactions; other users of the
   cluster do not count), NOTIFYs and the reply ids they carry (a LISTEN on `chat_reply`), and a reply's bytes
   on the gRPC wire: protobuf messages (+5 bytes of gRPC framing each) and TCP bytes through a counting proxy.
2. The primary's ceiling: pgbench replaying a reply's transactions (start, flushes of `--batch` rows, end) on a
   seeded copy of the schema: each alone (Postgres CPU per transaction, from its backends' /proc times), then
   mixed as replies mix them at 2, 8 and 32 clients; then the same with flushes as HOT updates (a what-if: the
   lease expiry out of the index of replies in flight, fillfactor 70).
3. The arithmetic: the per-reply numbers scaled to 10k / 100k / 1M concurrent streams at `--per-replica`
   streams a serving process.

Prints tables, writes JSON to tests/bench/results/scale-*.json. About 70 s on a 2-core box; pgbench must be
installed (Debian: postgresql-client), and the Postgres user must be a superuser (pg_walinspect).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import re
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import psutil
import sqlalchemy as sa

from chat.v1 import chat_pb2 as pb
from tests.bench.__main__ import RESULTS, ServerProcess, postgres_database
from tests.bench.scenarios import Target
from tests.bench.servers import RequestPaced, bench_settings

CHANNEL = "chat_reply"
MARKER = "bench:drained"  # a payload no reply id takes (ids are UUIDs)
STATS_METHOD = "/bench.v1.Stats/Get"
GRPC_FRAME = 5  # gRPC's length prefix on every message
SETTLE = 11.0  # Postgres flushes an idle backend's pending statistics within 10 s


# ------------------------------------------------------------------------------------------------ the served side


class StatementCounter:
    """Every statement the service sends, by verb and table, with rows (executemany counts each parameter set),
    and every commit/rollback, from SQLAlchemy's engine events. `flush_batches` lists the rows per flush."""

    def __init__(self, engine: Any) -> None:
        self.statements: Counter[str] = Counter()
        self.rows: Counter[str] = Counter()
        self.samples: dict[str, str] = {}
        self.commits = 0
        self.rollbacks = 0
        self.flush_batches: list[int] = []
        sa.event.listen(engine.sync_engine, "before_cursor_execute", self._on_execute)
        sa.event.listen(engine.sync_engine, "commit", self._on_commit)
        sa.event.listen(engine.sync_engine, "rollback", self._on_rollback)

    @staticmethod
    def kind(statement: str) -> str:
        text = " ".join(statement.split())
        verb = text.split(" ", 1)[0].upper()
        table = {
            "INSERT": r"INSERT INTO (\w+)",
            "UPDATE": r"UPDATE (\w+)",
            "DELETE": r"DELETE FROM (\w+)",
        }.get(verb, r"\bFROM (\w+)")
        found = re.search(table, text, re.IGNORECASE)
        name = f"{verb} {found.group(1) if found else '?'}"
        if verb == "SELECT" and " FOR UPDATE" in text.upper():
            name += " FOR UPDATE"
        return name

    def _on_execute(
        self, _conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, executemany: bool
    ) -> None:
        kind = self.kind(statement)
        rows = len(parameters) if executemany else 1
        self.statements[kind] += 1
        self.rows[kind] += rows
        self.samples.setdefault(kind, " ".join(statement.split())[:400])
        if kind == "UPDATE messages" and executemany:
            self.flush_batches.append(rows)

    def _on_commit(self, _conn: Any) -> None:
        self.commits += 1

    def _on_rollback(self, _conn: Any) -> None:
        self.rollbacks += 1

    def snapshot(self) -> dict[str, Any]:
        return {
            "statements": dict(self.statements),
            "rows": dict(self.rows),
            "commits": self.commits,
            "rollbacks": self.rollbacks,
            "flush_batches": list(self.flush_batches),
            "samples": dict(self.samples),
        }


async def serve(database_url: str) -> None:
    """chat-service (the real App: interceptors, auth, storage, flusher, LISTEN/NOTIFY) with the paced clock model
    and a statement counter; `/bench.v1.Stats/Get` answers the counter as JSON. Prints `READY <port> <key>`."""
    from service.app import App, build

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    settings = bench_settings(database_url, replica_id="scale")
    app = App(build(settings, provider=RequestPaced()))
    counter = StatementCounter(app.deps.database.engine)

    async def get(_request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
        return json.dumps(counter.snapshot()).encode()

    handler = grpc.method_handlers_generic_handler("bench.v1.Stats", {"Get": grpc.unary_unary_rpc_method_handler(get)})
    app.server.add_generic_rpc_handlers((handler,))
    port = await app.start()
    _, key = await app.deps.use_cases.api_keys.create("bench")
    print(f"READY {port} {key}", flush=True)
    await stop.wait()
    await app.stop(grace=1.0)


# ---------------------------------------------------------------------------------------------- measured from outside


class CountingProxy:
    """A TCP proxy in front of the server that counts the bytes each way: what a reply costs on the wire
    (HTTP/2 frames, HPACK headers, gRPC framing, protobuf), not only the protobuf messages."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.up = 0  # client -> server
        self.down = 0  # server -> client
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        await asyncio.gather(self._pipe(reader, up_writer, "up"), self._pipe(up_reader, writer, "down"))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, way: str) -> None:
        try:
            while data := await reader.read(65536):
                if way == "up":
                    self.up += len(data)
                else:
                    self.down += len(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()


class NotifyCounter:
    """LISTEN on the service's channel in the private database: NOTIFYs delivered and the reply ids they carry."""

    def __init__(self) -> None:
        self.notifications = 0
        self.ids = 0
        self.payload_bytes = 0
        self._conn: Any = None
        self._marker: asyncio.Future[None] | None = None

    async def start(self, dsn: str) -> None:
        self._conn = await asyncpg.connect(dsn)
        await self._conn.add_listener(CHANNEL, self._on)

    async def drain(self) -> None:
        """Wait until every NOTIFY committed so far has arrived: Postgres delivers a channel's notifications in
        commit order, so once this session's own marker arrives, those before it have too."""
        self._marker = asyncio.get_running_loop().create_future()
        await self._conn.execute(f"NOTIFY {CHANNEL}, '{MARKER}'")
        async with asyncio.timeout(10):
            await self._marker

    def _on(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        if payload == MARKER:
            if self._marker is not None and not self._marker.done():
                self._marker.set_result(None)
            return  # the bench's own, not the service's
        self.notifications += 1
        self.ids += len(payload.split(","))
        self.payload_bytes += len(payload.encode())

    def snapshot(self) -> dict[str, int]:
        return {"notifications": self.notifications, "ids": self.ids, "payload_bytes": self.payload_bytes}

    @property
    def pid(self) -> int:
        return int(self._conn.get_server_pid())

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()


async def backends_gone(admin: Any, name: str, *, keep: int) -> None:
    """Wait (bounded) until the served process's backends on database `name` have exited (all but `keep`'s):
    a backend flushes its statistics as it exits."""
    query = "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> $2"
    async with asyncio.timeout(10):
        while True:
            if not await admin.fetchval(query, name, keep):
                return
            await asyncio.sleep(0.05)


DATABASE_STATS = (
    "SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_deleted, tup_returned, tup_fetched "
    "FROM pg_stat_database WHERE datname = $1"
)
TABLE_STATS = (
    "SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del, autovacuum_count, autoanalyze_count "
    "FROM pg_stat_user_tables "
    "WHERE n_tup_ins + n_tup_upd + n_tup_del > 0 OR relname IN ('messages', 'conversations')"
)


async def database_stats(admin: Any, name: str) -> dict[str, int]:
    await admin.execute("SELECT pg_stat_clear_snapshot()")
    row = await admin.fetchrow(DATABASE_STATS, name)
    return dict(row)


async def table_stats(dsn: str) -> dict[str, dict[str, int]]:
    conn = await asyncpg.connect(dsn)  # a connection of its own: its exit flushes its statistics at once
    try:
        return {r["relname"]: dict(r) for r in await conn.fetch(TABLE_STATS)}
    finally:
        await conn.close()


def minus(after: Any, before: Any) -> Any:
    """`after - before`, key by key: numbers subtracted, lists cut to what was appended, anything else as after."""
    if isinstance(after, dict):
        return {k: minus(v, (before or {}).get(k)) for k, v in after.items()}
    if isinstance(after, list):
        return after[len(before or []) :]
    if isinstance(after, int | float):
        return after - (before or 0)
    return after


async def wal_of_database(dsn: str, start: str, end: str) -> dict[str, Any]:
    """WAL the private database's records took between two LSNs (pg_walinspect): records that touch its relations,
    and the commit records of the transactions that wrote them. Other databases of the cluster do not count."""
    conn = await asyncpg.connect(dsn)
    try:
        oid = await conn.fetchval("SELECT oid FROM pg_database WHERE datname = current_database()")
        rows = await conn.fetch(
            "SELECT xid::text::bigint AS xid, resource_manager, record_type, record_length, fpi_length, block_ref "
            "FROM pg_get_wal_records_info($1::text::pg_lsn, $2::text::pg_lsn)",
            start,
            end,
        )
    finally:
        await conn.close()
    mine = re.compile(rf"rel \d+/{oid}/")
    ours = [r for r in rows if r["block_ref"] and mine.search(r["block_ref"])]
    xids = {r["xid"] for r in ours if r["xid"]}
    commits = [r for r in rows if r["resource_manager"] == "Transaction" and r["xid"] in xids]
    records = ours + commits
    by_kind: Counter[str] = Counter()
    for r in records:
        by_kind[f"{r['resource_manager']}/{r['record_type']}"] += int(r["record_length"])
    return {
        "bytes": sum(int(r["record_length"]) for r in records),
        "fpi_bytes": sum(int(r["fpi_length"]) for r in records),
        "records": len(records),
        "commit_records": len(commits),
        "cluster_bytes": sum(int(r["record_length"]) for r in rows),
        "by_kind": dict(by_kind.most_common(8)),
    }


# ------------------------------------------------------------------------------------------------ per reply


def served_process(database_url: str, log: Path) -> ServerProcess:
    """chat-service on `database_url`, served by this module's `serve` command in a process of its own."""
    command = [sys.executable, "-m", "tests.bench.scale", "serve", "--database", database_url]
    return ServerProcess(command, log)


async def reply(target: Target, index: int, conversation_id: str, content: str, wire: Counter[str]) -> bool:
    request = pb.StreamReplyRequest(conversation_id=conversation_id, content=content)
    wire["request_bytes"] += request.ByteSize() + GRPC_FRAME
    completed = False
    call = target.stub(index).StreamReply(request, metadata=target.metadata)
    async for response in call:
        wire["messages"] += 1
        wire["response_bytes"] += response.ByteSize() + GRPC_FRAME
        if response.event.HasField("delta"):
            wire["deltas"] += 1
            wire["text_bytes"] += len(response.event.delta.text.encode())
        completed = completed or response.event.HasField("completed")
    return completed


async def replies(target: Target, conversations: list[str], content: str, ramp: float) -> tuple[int, Counter[str]]:
    wire: Counter[str] = Counter()

    async def one(i: int) -> bool:
        await asyncio.sleep(ramp * i / len(conversations))
        return await reply(target, i, conversations[i], content, wire)

    done = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(len(conversations)))), timeout=120)
    return sum(done), wire


async def per_reply(streams: int, tokens: int, rate: float, workdir: Path) -> dict[str, Any]:
    name = f"chat_bench_scale_{os.getpid()}"
    url = await postgres_database(name)
    dsn = sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    admin_dsn = sa.make_url(url).set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    server = served_process(url, workdir / "scale-server.log")
    admin = await asyncpg.connect(admin_dsn)
    listener = NotifyCounter()
    proxy: CountingProxy | None = None
    target: Target | None = None
    content = f"rate={rate} tokens={tokens}"
    try:
        port, key = await asyncio.to_thread(server.ready)
        setup = await asyncpg.connect(dsn)
        await setup.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
        await setup.close()
        proxy = CountingProxy(port)
        target = Target(f"127.0.0.1:{await proxy.start()}", key, server.process.pid)
        await target.open()
        await listener.start(dsn)
        warm = [await target.conversation(i) for i in range(4)]
        await replies(target, warm, f"rate=0 tokens={tokens}", 0.0)  # connections, prepared statements, caches
        conversations = [await target.conversation(i) for i in range(streams)]
        # The measured replies are second turns: a history to read, as most replies have.
        await replies(target, conversations, f"rate=0 tokens={tokens}", 0.0)
        print(f"  per reply: letting the statistics settle ({SETTLE:g} s) ...", file=sys.stderr, flush=True)
        await asyncio.sleep(SETTLE)
        before = {
            "tables": await table_stats(dsn),
            "database": await database_stats(admin, name),
            "lsn": await admin.fetchval("SELECT pg_current_wal_insert_lsn()::text"),
            "served": await target.writes(),
            "notify": listener.snapshot(),
            "tcp": (proxy.up, proxy.down),
        }
        print(f"  per reply: {streams} streams x {tokens} tokens at {rate:g}/s ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        completed, wire = await replies(target, conversations, content, 1.0)
        seconds = time.perf_counter() - started
        await listener.drain()  # the last NOTIFYs reach the listener
        served = minus(await target.writes(), before["served"])
        notify = minus(listener.snapshot(), before["notify"])
        tcp = (proxy.up - before["tcp"][0], proxy.down - before["tcp"][1])
        await target.close()
        target = None
        server.stop()  # its backends exit: their statistics are flushed
        await backends_gone(admin, name, keep=listener.pid)
        after_database = await database_stats(admin, name)
        # synchronous_commit: every committed transaction of the run is flushed; walinspect reads up to here
        lsn = await admin.fetchval("SELECT pg_current_wal_flush_lsn()::text")
        after_tables = await table_stats(dsn)
        wal = await wal_of_database(dsn, before["lsn"], lsn)
    finally:
        if target is not None:
            await target.close()
        if proxy is not None:
            await proxy.close()
        await listener.close()
        server.stop()
        await admin.close()
        await postgres_database(name, drop=True)
    database = minus(after_database, before["database"])
    tables = minus(after_tables, before["tables"])
    return {
        "streams": streams,
        "tokens": tokens,
        "rate": rate,
        "completed": completed,
        "seconds": seconds,
        "reply_seconds": tokens / rate,
        "served": {k: served[k] for k in ("statements", "rows", "commits", "rollbacks")},
        "flush_batches": served["flush_batches"],
        "samples": served["samples"],
        "postgres": database,
        "tables": {k: v for k, v in tables.items() if any(v.values())},
        "wal": wal,
        "notify": notify,
        "wire": dict(wire),
        "tcp": {"up": tcp[0], "down": tcp[1]},
    }


# ------------------------------------------------------------------------------------------------ the primary's ceiling

# A copy of the schema (the service's migrations) seeded with conversations, each with a user message that is its
# current leaf and an assistant message STREAMING under the lease of one of `replicas` replicas. The scripts are
# the statements of a reply as the service sends them (see the samples the first part prints): the start
# (Replies.stream: lock+touch, the branch read, one two-row insert, the new current leaf), a flush (the flusher's
# tick: one executemany UPDATE over a replica's replies in flight, pipelined like asyncpg's, then leased()), the
# end (finish()). Text is random hex (pglz cannot shrink it): a whole reply's measured length at the end, a random
# prefix of it at each flush (a flush rewrites the text so far; its length differs from the stored one, so Postgres
# cannot log the update as a diff of the old row: as with the service, where the text grows).

SEED = """
INSERT INTO conversations (id, owner, title, model, persona, system_prompt, create_time, update_time,
                           current_message_id)
  SELECT 'c' || i, 'owner' || (i % 1000), 'bench', 'bench-clock', '', '', now(), now(), 'u' || i
  FROM generate_series(1, {conversations}) AS i;
INSERT INTO messages (id, conversation_id, owner, role, content, status, model, create_time, update_time, parent_id)
  SELECT 'u' || i, 'c' || i, 'owner' || (i % 1000), 'user', 'rate=20 tokens=60', 'completed', 'bench-clock',
         now(), now(), ''
  FROM generate_series(1, {conversations}) AS i;
INSERT INTO messages (id, conversation_id, owner, role, content, status, model, create_time, update_time, parent_id,
                      lease_owner, lease_epoch, lease_expires_at)
  SELECT 'm' || i, 'c' || i, 'owner' || (i % 1000), 'assistant', '', 'streaming', 'bench-clock', now(), now(),
         'u' || i, 'r' || ((i - 1) / {batch}), 1, now() + interval '1 hour'
  FROM generate_series(1, {streaming}) AS i;
CREATE TABLE scale_text AS SELECT left(string_agg(md5(random()::text), ''), {chars}) AS t
  FROM generate_series(0, {chars} / 32);
"""

START = """\\set c random(1, {conversations})
SELECT gen_random_uuid()::text AS uid, gen_random_uuid()::text AS rid \\gset
BEGIN;
UPDATE conversations SET update_time = now() WHERE id = 'c' || :c
  RETURNING id, owner, title, model, persona, system_prompt, create_time, update_time, current_message_id \\gset
WITH RECURSIVE path(seq, parent_id, depth) AS (
    SELECT seq, parent_id, 1 FROM messages WHERE id = :current_message_id AND conversation_id = 'c' || :c
  UNION ALL
    SELECT parent.seq, parent.parent_id, path.depth + 1 FROM messages AS parent, path
    WHERE parent.id = path.parent_id AND path.depth < 50)
SELECT messages.* FROM messages JOIN path ON messages.seq = path.seq ORDER BY messages.seq;
INSERT INTO messages (id, conversation_id, owner, role, content, status, model, create_time, update_time, parent_id,
                      lease_owner, lease_epoch, lease_expires_at)
  VALUES (:uid, 'c' || :c, 'owner' || (:c % 1000), 'user', 'rate=20 tokens=60', 'completed', 'bench-clock',
          now(), now(), :current_message_id, NULL, 0, NULL),
         (:rid, 'c' || :c, 'owner' || (:c % 1000), 'assistant', '', 'streaming', 'bench-clock', now(), now(), :uid,
          'scale', 1, now() + interval '10 seconds');
UPDATE conversations SET current_message_id = :rid, update_time = now() WHERE id = 'c' || :c;
COMMIT;
"""

FLUSH_ROW = (
    "UPDATE messages SET content = (SELECT left(t, :len) FROM scale_text), "
    "lease_expires_at = now() + interval '10 seconds', update_time = now() "
    "WHERE id = 'm' || (:base + {k}) AND status = 'streaming' AND lease_owner = 'r' || :r AND lease_epoch = 1;"
)

FLUSH = """\\set r random(0, {replicas} - 1)
\\set len random(1, {chars})
\\set base :r * {batch}
\\startpipeline
BEGIN;
{rows}
\\endpipeline
SELECT id, lease_epoch, cancel_requested FROM messages WHERE status = 'streaming' AND lease_owner = 'r' || :r;
COMMIT;
"""

END = """\\set m random(1, {streaming})
BEGIN;
UPDATE messages SET content = (SELECT t FROM scale_text), status = 'streaming', prompt_tokens = 8,
    completion_tokens = 60, usage_estimated = false, finish_reason = 'stop', error_message = '', error_reason = '',
    update_time = now(), lease_owner = 'r' || ((:m - 1) / {batch}), lease_expires_at = now() + interval '1 hour'
  WHERE id = 'm' || :m AND status = 'streaming' AND lease_owner = 'r' || ((:m - 1) / {batch}) AND lease_epoch = 1;
COMMIT;
"""


def scripts(directory: Path, *, conversations: int, replicas: int, batch: int, chars: int) -> dict[str, Path]:
    values = {
        "conversations": conversations,
        "replicas": replicas,
        "batch": batch,
        "streaming": replicas * batch,
        "chars": chars,
    }
    rows = "\n".join(FLUSH_ROW.format(k=k) for k in range(1, batch + 1))
    texts = {"start": START.format(**values), "flush": FLUSH.format(rows=rows, **values), "end": END.format(**values)}
    paths = {}
    for name, text in texts.items():
        paths[name] = directory / f"{name}.sql"
        paths[name].write_text(text)
    return paths


HOT = [
    "DROP INDEX ix_messages_streaming",
    "CREATE INDEX ix_messages_streaming ON messages (lease_owner) WHERE status = 'streaming'",
    "ALTER TABLE messages SET (fillfactor = 70)",
    "VACUUM FULL ANALYZE messages",
]


async def update_stats(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        query = "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'messages'"
        return dict(await conn.fetchrow(query))
    finally:
        await conn.close()


def backend_cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


async def pgbench(admin: Any, name: str, dsn: str, files: list[str], *, clients: int, seconds: float) -> dict[str, Any]:
    """One pgbench run; Postgres' CPU is its backends' for this database, read from /proc over the middle of it."""
    url = sa.make_url(dsn)
    command = [
        "pgbench", "-n", "-M", "prepared", "-c", str(clients), "-j", str(min(clients, 2)), "-T", str(int(seconds)),
        "-h", url.host or "127.0.0.1", "-p", str(url.port or 5432), "-U", url.username or "postgres", *files, name,
    ]  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    await asyncio.sleep(1.0)
    pids = [r["pid"] for r in await admin.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1", name)]
    lsn0 = await admin.fetchval("SELECT pg_current_wal_insert_lsn()::text")
    cpu0, t0 = backend_cpu(pids), time.perf_counter()
    await asyncio.sleep(seconds - 2.0)
    cpu1, t1 = backend_cpu(pids), time.perf_counter()
    lsn1 = await admin.fetchval("SELECT pg_current_wal_insert_lsn()::text")
    out, err = await process.communicate()
    text = out.decode()
    if process.returncode != 0:
        raise RuntimeError(f"pgbench failed: {err.decode()[-2000:]}")
    tps = float(re.search(r"tps = ([0-9.]+)", text).group(1))  # type: ignore[union-attr]
    counts = dict(re.findall(r"SQL script \d+: .*?/(\w+)\.sql\n - weight: \d+ .*?\n - (\d+) transactions", text))
    window = t1 - t0
    wal = await admin.fetchval("SELECT $1::text::pg_lsn - $2::text::pg_lsn", lsn1, lsn0)
    return {
        "clients": clients,
        "tps": tps,
        "transactions": {k: int(v) for k, v in counts.items()},
        "postgres_cores": (cpu1 - cpu0) / window,
        "postgres_cpu_us_per_transaction": (cpu1 - cpu0) / (tps * window) * 1e6 if tps else None,
        "wal_bytes_per_s_cluster": float(wal) / window,
    }


async def ceiling(measured: dict[str, Any], *, batch: int, seconds: float, workdir: Path) -> dict[str, Any]:
    """pgbench replaying a reply's transactions: each alone (CPU per transaction), then mixed as replies mix them
    (per reply: one start, one end, flush rows / `batch` flushes) at increasing client counts."""
    from service.storage import migrate

    if shutil.which("pgbench") is None:
        return {"skipped": "pgbench not found (Debian: postgresql-client / postgresql-contrib)"}
    name = f"chat_bench_scale_pg_{os.getpid()}"
    url = await postgres_database(name)
    dsn = sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    admin_dsn = sa.make_url(url).set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    replies = measured["completed"] or 1
    flush_rows = sum(measured["flush_batches"])
    flushes_per_reply = flush_rows / replies
    chars = max(32, int(measured["wire"].get("text_bytes", 0) / replies))  # a whole reply's text
    replicas, conversations = 20, 20_000
    admin = await asyncpg.connect(admin_dsn)
    try:
        await asyncio.to_thread(migrate.upgrade, url)
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(
                SEED.format(conversations=conversations, streaming=replicas * batch, batch=batch, chars=chars)
            )
            await conn.execute("VACUUM ANALYZE")
        finally:
            await conn.close()
        paths = scripts(workdir, conversations=conversations, replicas=replicas, batch=batch, chars=chars)
        runs: dict[str, Any] = {}
        for script, clients in (("start", 8), ("flush", 4), ("end", 8)):
            print(f"  ceiling: {script} alone, {clients} clients ...", file=sys.stderr, flush=True)
            runs[script] = await pgbench(admin, name, dsn, ["-f", str(paths[script])], clients=clients, seconds=seconds)
        weights = {"start": batch, "end": batch, "flush": max(1, round(flushes_per_reply))}
        mixed = [arg for script, w in weights.items() for arg in ("-f", f"{paths[script]}@{w}")]
        levels = {}
        for clients in (2, 8, 32):
            print(f"  ceiling: a reply's mix, {clients} clients ...", file=sys.stderr, flush=True)
            levels[str(clients)] = await pgbench(admin, name, dsn, mixed, clients=clients, seconds=seconds)
        updates = await update_stats(dsn)
        # What if a flush were a HOT update (no index entry written): the lease's expiry out of the index of replies
        # in flight (the sweeper filters the few STREAMING rows of an owner by it), and room on each page.
        conn = await asyncpg.connect(dsn)
        try:
            for statement in HOT:
                await conn.execute(statement)
        finally:
            await conn.close()
        hot: dict[str, Any] = {}
        print("  ceiling: the same, flushes as HOT updates ...", file=sys.stderr, flush=True)
        hot["flush"] = await pgbench(admin, name, dsn, ["-f", str(paths["flush"])], clients=4, seconds=seconds)
        hot["mixed"] = await pgbench(admin, name, dsn, mixed, clients=8, seconds=seconds)
        hot_updates = minus(await update_stats(dsn), updates)
    finally:
        await admin.close()
        await postgres_database(name, drop=True)
    share = batch / sum(weights.values())  # the fraction of the mix's transactions that start a reply
    for level in [*levels.values(), hot["mixed"]]:
        level["replies_per_s"] = level["tps"] * share
    return {
        "batch": batch,
        "replicas": replicas,
        "conversations": conversations,
        "text_chars": chars,
        "flushes_per_reply": flushes_per_reply,
        "weights": weights,
        "alone": runs,
        "mixed": levels,
        "messages_updates": updates,
        "hot": {**hot, "updates": hot_updates, "changes": HOT},
    }


def summary(m: dict[str, Any], c: dict[str, Any] | None) -> dict[str, Any]:
    """What the README's arithmetic takes from a run: per reply, per stream-second, per replica, the ceiling."""
    n = m["completed"] or 1
    served, postgres, wal, wire = m["served"], m["postgres"], m["wal"], m["wire"]
    flushes = m["flush_batches"]
    s: dict[str, Any] = {
        "replies": n,
        "reply_seconds": m["reply_seconds"],
        "reply_text_bytes": wire.get("text_bytes", 0) / n,
        "statements_per_reply": sum(served["statements"].values()) / n,
        "transactions_per_reply_served": served["commits"] / n,
        "writing_transactions_per_reply": wal["commit_records"] / n,
        # pg_stat_database also counts other sessions' work in the database (autovacuum workers): JSON only
        "commits_per_reply_postgres": postgres["xact_commit"] / n,
        # the service's tables (pg_stat_database also counts TOAST chunks and catalog rows: JSON only)
        "rows_inserted_per_reply": sum(t["n_tup_ins"] for t in m["tables"].values()) / n,
        "rows_updated_per_reply": sum(t["n_tup_upd"] for t in m["tables"].values()) / n,
        "hot_updates_per_reply": sum(t["n_tup_hot_upd"] for t in m["tables"].values()) / n,
        "flush_rows_per_reply": sum(flushes) / n,
        "flush_transactions": len(flushes),
        "rows_per_flush_transaction": sum(flushes) / len(flushes) if flushes else 0,
        "flush_transactions_per_s": len(flushes) / m["seconds"],
        "wal_bytes_per_reply": wal["bytes"] / n,
        "wal_fpi_bytes_per_reply": wal["fpi_bytes"] / n,
        "wal_bytes_per_reply_without_fpi": (wal["bytes"] - wal["fpi_bytes"]) / n,
        "notifications_per_reply": m["notify"]["notifications"] / n,
        "notified_ids_per_reply": m["notify"]["ids"] / n,
        "notify_payload_bytes_per_reply": m["notify"]["payload_bytes"] / n,
        "grpc_messages_per_reply": wire.get("messages", 0) / n,
        "grpc_response_bytes_per_reply": wire.get("response_bytes", 0) / n,
        "tcp_bytes_down_per_reply": m["tcp"]["down"] / n,
        "tcp_bytes_up_per_reply": m["tcp"]["up"] / n,
    }
    if c and "alone" in c:
        alone = c["alone"]
        s["pg_cpu_us_start"] = alone["start"]["postgres_cpu_us_per_transaction"]
        s["pg_cpu_us_end"] = alone["end"]["postgres_cpu_us_per_transaction"]
        s["pg_cpu_us_flush_row"] = alone["flush"]["postgres_cpu_us_per_transaction"] / c["batch"]
        s["pg_wal_bytes_flush_row"] = alone["flush"]["wal_bytes_per_s_cluster"] / (alone["flush"]["tps"] * c["batch"])
        hot = c["hot"]
        s["hot_pg_cpu_us_flush_row"] = hot["flush"]["postgres_cpu_us_per_transaction"] / c["batch"]
        s["hot_pg_wal_bytes_flush_row"] = hot["flush"]["wal_bytes_per_s_cluster"] / (hot["flush"]["tps"] * c["batch"])
        upd = hot["updates"]
        s["hot_fraction"] = upd["n_tup_hot_upd"] / upd["n_tup_upd"] if upd["n_tup_upd"] else 0.0
        s["hot_ceiling_replies_per_s"] = hot["mixed"]["replies_per_s"]
        best = max(c["mixed"].values(), key=lambda r: r["replies_per_s"])
        s["ceiling_replies_per_s"] = best["replies_per_s"]
        s["ceiling_clients"] = best["clients"]
        s["ceiling_postgres_cores"] = best["postgres_cores"]
        s["ceiling_streams"] = best["replies_per_s"] * m["reply_seconds"]
    return s


def projection(s: dict[str, Any], *, per_replica: int, counts: tuple[int, ...]) -> list[dict[str, float]]:
    """The per-reply measurements scaled to `counts` concurrent streams of the measured shape (arithmetic, not
    measurement): replies of `reply_seconds`, `per_replica` streams a serving process (the paced benchmark's
    capacity), one flush tick every 250 ms a replica, a NOTIFY a tick for every 150 replies in flight (the
    service's batch) plus one a reply's end."""
    seconds = s["reply_seconds"]
    rows = []
    for n in counts:
        replicas = math.ceil(n / per_replica)
        replies = n / seconds  # replies started (and ended) a second
        row = {
            "streams": n,
            "replicas": replicas,
            "replies_per_s": replies,
            "row_writes_per_s": n * s["flush_rows_per_reply"] / seconds
            + replies * (s["rows_inserted_per_reply"] + s["rows_updated_per_reply"] - s["flush_rows_per_reply"]),
            "writing_transactions_per_s": replies * 2 + replicas * 4,
            "wal_mb_per_s": n * s["wal_bytes_per_reply"] / seconds / 1e6,
            "notify_per_s": replicas * 4 * math.ceil(per_replica / 150) + replies,
            "egress_mbit_per_s": n * s["tcp_bytes_down_per_reply"] / seconds * 8 / 1e6,
        }
        if "pg_cpu_us_start" in s:
            per_stream_second = (s["pg_cpu_us_start"] + s["pg_cpu_us_end"]) / seconds + s[
                "flush_rows_per_reply"
            ] / seconds * s["pg_cpu_us_flush_row"]
            row["postgres_cores"] = n * per_stream_second / 1e6
        rows.append(row)
    return rows


def projection_table(rows: list[dict[str, float]]) -> list[str]:
    lines = [
        "| streams | replicas | replies/s | row writes/s | writing transactions/s | WAL MB/s | NOTIFY/s "
        "| Postgres cores | egress Mbit/s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['streams']:,} | {r['replicas']:,} | {r['replies_per_s']:,.0f} | {r['row_writes_per_s']:,.0f} "
            f"| {r['writing_transactions_per_s']:,.0f} | {r['wal_mb_per_s']:,.0f} | {r['notify_per_s']:,.0f} "
            f"| {r.get('postgres_cores', float('nan')):,.1f} | {r['egress_mbit_per_s']:,.0f} |"
        )
    return lines


def report(s: dict[str, Any], m: dict[str, Any], c: dict[str, Any] | None) -> str:
    lines = [
        f"per reply ({s['replies']} replies of {m['tokens']} tokens at {m['rate']:g} tokens/s, "
        f"{s['reply_text_bytes']:.0f} bytes of text each):",
        "| measure | per reply |",
        "|---|---:|",
    ]
    rows = [
        ("SQL statements (service side)", s["statements_per_reply"], ".1f"),
        ("transactions committed (service side)", s["transactions_per_reply_served"], ".2f"),
        ("transactions that wrote (commit records in WAL)", s["writing_transactions_per_reply"], ".2f"),
        ("rows inserted (Postgres, the service's tables)", s["rows_inserted_per_reply"], ".1f"),
        ("rows updated (Postgres, the service's tables)", s["rows_updated_per_reply"], ".1f"),
        ("  of which HOT (no index entry written)", s["hot_updates_per_reply"], ".1f"),
        ("flush row updates", s["flush_rows_per_reply"], ".1f"),
        ("WAL bytes (this database's records)", s["wal_bytes_per_reply"], ",.0f"),
        ("  of which full-page images", s["wal_fpi_bytes_per_reply"], ",.0f"),
        ("NOTIFYs sent", s["notifications_per_reply"], ".2f"),
        ("reply ids notified", s["notified_ids_per_reply"], ".1f"),
        ("gRPC messages to the client", s["grpc_messages_per_reply"], ".1f"),
        ("gRPC response bytes (protobuf + 5)", s["grpc_response_bytes_per_reply"], ",.0f"),
        ("TCP bytes server -> client", s["tcp_bytes_down_per_reply"], ",.0f"),
        ("TCP bytes client -> server", s["tcp_bytes_up_per_reply"], ",.0f"),
    ]
    lines += [f"| {label} | {format(value, fmt)} |" for label, value, fmt in rows]
    lines += [
        "",
        f"per replica: {s['flush_transactions']} flush transactions in {m['seconds']:.1f} s "
        f"({s['flush_transactions_per_s']:.1f}/s), {s['rows_per_flush_transaction']:.1f} rows each; "
        f"statements by kind: { {k: v for k, v in m['served']['statements'].items() if v} }",
    ]
    if c and "alone" in c:
        lines += [
            "",
            f"the primary's ceiling (pgbench replay; flush batch {c['batch']} rows, text {c['text_chars']} chars):",
            "| run | clients | tps | Postgres cores | Postgres CPU / transaction | replies/s | WAL MB/s (cluster) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for script, r in c["alone"].items():
            lines.append(
                f"| {script} alone | {r['clients']} | {r['tps']:,.0f} | {r['postgres_cores']:.2f} "
                f"| {r['postgres_cpu_us_per_transaction']:,.0f} µs | - | {r['wal_bytes_per_s_cluster'] / 1e6:.1f} |"
            )
        for r in c["mixed"].values():
            lines.append(
                f"| a reply's mix | {r['clients']} | {r['tps']:,.0f} | {r['postgres_cores']:.2f} "
                f"| {r['postgres_cpu_us_per_transaction']:,.0f} µs | {r['replies_per_s']:,.0f} "
                f"| {r['wal_bytes_per_s_cluster'] / 1e6:.1f} |"
            )
        lines.append(
            f"| flush, HOT | {c['hot']['flush']['clients']} | {c['hot']['flush']['tps']:,.0f} "
            f"| {c['hot']['flush']['postgres_cores']:.2f} "
            f"| {c['hot']['flush']['postgres_cpu_us_per_transaction']:,.0f} µs | - "
            f"| {c['hot']['flush']['wal_bytes_per_s_cluster'] / 1e6:.1f} |"
        )
        r = c["hot"]["mixed"]
        lines.append(
            f"| a reply's mix, HOT | {r['clients']} | {r['tps']:,.0f} | {r['postgres_cores']:.2f} "
            f"| {r['postgres_cpu_us_per_transaction']:,.0f} µs | {r['replies_per_s']:,.0f} "
            f"| {r['wal_bytes_per_s_cluster'] / 1e6:.1f} |"
        )
        lines += [
            "",
            f"Postgres CPU: start {s['pg_cpu_us_start']:,.0f} µs, end {s['pg_cpu_us_end']:,.0f} µs, "
            f"flush {s['pg_cpu_us_flush_row']:,.0f} µs a row; ceiling here {s['ceiling_replies_per_s']:,.0f} "
            f"replies/s = {s['ceiling_streams']:,.0f} concurrent {s['reply_seconds']:g}-second streams "
            f"({s['ceiling_postgres_cores']:.2f} Postgres cores); WAL {s['pg_wal_bytes_flush_row']:,.0f} bytes a "
            f"flushed row. HOT: {s['hot_fraction']:.0%} of updates, flush {s['hot_pg_cpu_us_flush_row']:,.0f} µs "
            f"and {s['hot_pg_wal_bytes_flush_row']:,.0f} WAL bytes a row, "
            f"{s['hot_ceiling_replies_per_s']:,.0f} replies/s",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    served = sub.add_parser("serve", help="(internal) the measured server")
    served.add_argument("--database", required=True)
    parser.add_argument("--streams", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=60)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--batch", type=int, default=200, help="rows per flush in the replay (streams per replica)")
    parser.add_argument("--pgbench-seconds", type=float, default=5.0)
    parser.add_argument("--no-ceiling", action="store_true", help="the per-reply part only")
    parser.add_argument("--per-replica", type=int, default=200, help="streams a process carries (paced bench)")
    parser.add_argument("--reuse", action="store_true", help="the per-reply part from scale-latest.json")
    args = parser.parse_args()
    if args.command == "serve":
        asyncio.run(serve(args.database))
        return
    with tempfile.TemporaryDirectory(prefix="chat-bench-scale-") as tmp:
        if args.reuse:
            measured = json.loads((RESULTS / "scale-latest.json").read_text())["per_reply"]
        else:
            measured = asyncio.run(per_reply(args.streams, args.tokens, args.rate, Path(tmp)))
        limit = None
        if not args.no_ceiling:
            limit = asyncio.run(ceiling(measured, batch=args.batch, seconds=args.pgbench_seconds, workdir=Path(tmp)))
    numbers = summary(measured, limit)
    projected = projection(numbers, per_replica=args.per_replica, counts=(10_000, 100_000, 1_000_000))
    print(report(numbers, measured, limit))
    print(f"\nscaled (arithmetic; {args.per_replica} streams a process, the measured reply shape):")
    print("\n".join(projection_table(projected)))
    document = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "command": " ".join(["python -m tests.bench.scale", *sys.argv[1:]]),
        "summary": numbers,
        "projection": projected,
        "per_reply": measured,
        "ceiling": limit,
    }
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for path in (RESULTS / f"scale-{stamp}.json", RESULTS / "scale-latest.json"):
        path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nJSON: {RESULTS / 'scale-latest.json'}")


if __name__ == "__main__":
    main()
