"""The realistic path: a paced model speaking Ollama's wire format in its own process, chat-service (`chat-service
serve`, the `ollama` adapter, Postgres, every reply stored) in front of it, and this process as the load client.

    python -m tests.bench.paced [--quick] [--levels 1,20,50,200,500,1000] [--workers 1,2] [--profile DIR]

For each level N: N streams of 60 tokens at 20 tokens/s each, started over one second, read to their end, once
directly from the upstream (the floor) and once through the service. Measured per level: tokens/s delivered
against the expected, p50/p99 added latency per token (received - emitted: each token carries its emission
time), time to first token, lost tokens, unfinished streams, and the service's CPU per token (its processes'
user+system time over the trial / tokens delivered). Also: TTFT overhead at one stream over direct, unary
CreateConversation+GetConversation against a raw grpc.aio + asyncpg server running the same SQL, and a burst of
1,000 stream starts at once. Prints a table with every target of the issue met or not, writes JSON to
tests/bench/results/, and rewrites the README table between `<!-- bench:paced -->` markers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import orjson
import psutil

from chat.v1 import chat_pb2 as pb
from tests.bench.__main__ import RESULTS, postgres_database
from tests.bench.clock_provider import MODEL, SEPARATOR, stamps
from tests.bench.scenarios import Target, percentile
from tests.net import free_port

README = Path(__file__).resolve().parents[2] / "README.md"
BIN = Path(sys.executable).parent
RATE, TOKENS, RAMP = 20.0, 60, 1.0
TRIAL_SLACK = 15.0


@dataclass
class Trial:
    """What one level measured."""

    streams: int
    tokens: int = 0
    latencies: list[float] = field(default_factory=list)
    first_tokens: list[float] = field(default_factory=list)
    incomplete: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    cpu_seconds: float | None = None

    def summary(self) -> dict[str, Any]:
        expected = self.streams * TOKENS
        active = TOKENS / RATE  # seconds a stream streams
        return {
            "streams": self.streams,
            "tokens": self.tokens,
            "lost_tokens": expected - self.tokens,
            "tokens_per_s": self.tokens / active,  # delivered per second of a stream's life, summed
            "delivered_ratio": self.tokens / expected,
            "p50_ms": percentile(self.latencies, 50) * 1000,
            "p99_ms": percentile(self.latencies, 99) * 1000,
            "ttft_p50_ms": percentile(self.first_tokens, 50) * 1000,
            "ttft_p99_ms": percentile(self.first_tokens, 99) * 1000,
            "incomplete_streams": self.incomplete,
            "errors": self.errors,
            "cpu_us_per_token": self.cpu_seconds / self.tokens * 1e6 if self.cpu_seconds and self.tokens else None,
            "cpu_cores": self.cpu_seconds / self.seconds if self.cpu_seconds and self.seconds else None,
        }


class Process:
    """A child process that prints `READY ...` once it serves."""

    def __init__(self, command: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self._log = log.open("w")
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=self._log, text=True, env={**os.environ, **(env or {})}
        )

    def ready(self, marker: str, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if marker in line:
                return line.strip()
            if not line and self.process.poll() is not None:
                break
        raise RuntimeError(f"{self.process.args} did not start (see {self._log.name})")

    def cpu_seconds(self) -> float:
        """User + system time of the process and its children (the serving workers)."""
        total = 0.0
        try:
            root = psutil.Process(self.process.pid)
            for proc in [root, *root.children(recursive=True)]:
                times = proc.cpu_times()
                total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
        return total

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


# ------------------------------------------------------------------------------------------------ clients


async def direct_stream(session: aiohttp.ClientSession, url: str, trial: Trial) -> None:
    """One paced reply read straight from the upstream: what the service adds is measured against this."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"rate={RATE} tokens={TOKENS}"}], "stream": True}
    sent, got = time.time(), 0
    async with session.post(url + "/api/chat", data=orjson.dumps(body)) as response:
        async for line in response.content:
            chunk = orjson.loads(line)
            if chunk.get("done"):
                break
            received = time.time()
            if not got:
                trial.first_tokens.append(received - sent)
            for emitted in stamps(chunk["message"]["content"]):
                trial.latencies.append(received - emitted)
                got += 1
    trial.tokens += got
    if got < TOKENS:
        trial.incomplete += 1


async def service_stream(target: Target, index: int, conversation_id: str, trial: Trial) -> None:
    call = target.stub(index).StreamReply(
        pb.StreamReplyRequest(conversation_id=conversation_id, content=f"rate={RATE} tokens={TOKENS}"),
        metadata=target.metadata,
    )
    sent, got, pending, completed = time.time(), 0, "", False
    try:
        async for response in call:
            event = response.event
            if event.HasField("delta"):
                received = time.time()
                if not got and not pending:
                    trial.first_tokens.append(received - sent)
                whole, _, pending = (pending + event.delta.text).rpartition(SEPARATOR)
                for emitted in stamps(whole):
                    trial.latencies.append(received - emitted)
                    got += 1
            elif event.HasField("completed"):
                completed = True
    except grpc.aio.AioRpcError as error:
        name = error.code().name
        trial.errors[name] = trial.errors.get(name, 0) + 1
    trial.tokens += got
    if not completed:
        trial.incomplete += 1


async def ramped(count: int, ramp: float, run: Any) -> float:
    async def one(i: int) -> None:
        await asyncio.sleep(ramp * i / count)
        await run(i)

    started = time.perf_counter()
    tasks = [asyncio.ensure_future(one(i)) for i in range(count)]
    await asyncio.wait(tasks, timeout=ramp + TOKENS / RATE + TRIAL_SLACK)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return time.perf_counter() - started


async def direct_trial(url: str, streams: int) -> Trial:
    trial = Trial(streams)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        trial.seconds = await ramped(streams, RAMP, lambda i: direct_stream(session, url, trial))
    return trial


async def conversations(target: Target, count: int) -> list[str]:
    created: list[str] = [""] * count
    indexes = iter(range(count))

    async def creator() -> None:
        for i in indexes:
            created[i] = await target.conversation(i)

    await asyncio.gather(*(creator() for _ in range(min(64, count))))
    return created


async def service_trial(
    target: Target, server: Process, streams: int, ramp: float = RAMP, profile: Path | None = None
) -> Trial:
    """N streams through the service; its CPU (and the profile, when asked) covers the streams only, not the
    conversations made for them first."""
    trial = Trial(streams)
    created = await conversations(target, streams)
    cpu = server.cpu_seconds()
    with profiled(server.process.pid, profile, TOKENS / RATE + ramp):
        trial.seconds = await ramped(streams, ramp, lambda i: service_stream(target, i, created[i], trial))
    trial.cpu_seconds = server.cpu_seconds() - cpu
    return trial


async def unary(target: Target, *, callers: int = 64, seconds: float) -> float:
    done, deadline = 0, time.perf_counter() + seconds

    async def caller(i: int) -> None:
        nonlocal done
        stub = target.stub(i)
        while time.perf_counter() < deadline:
            created = await stub.CreateConversation(pb.CreateConversationRequest(title="u"), metadata=target.metadata)
            await stub.GetConversation(
                pb.GetConversationRequest(conversation_id=created.conversation.conversation_id),
                metadata=target.metadata,
            )
            done += 2

    started = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(callers)))
    return done / (time.perf_counter() - started)


# ------------------------------------------------------------------------------------------------ processes


@contextlib.contextmanager
def upstream(workdir: Path) -> Iterator[str]:
    process = Process([sys.executable, "-m", "tests.bench.upstream"], workdir / "upstream.log")
    try:
        port = process.ready("READY").split()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        process.stop()


@contextlib.asynccontextmanager
async def service(workdir: Path, upstream_url: str, workers: int, tag: str) -> AsyncIterator[tuple[Target, Process]]:
    name = f"chat_bench_paced_{os.getpid()}_{tag}"
    url = await postgres_database(name)
    env = {
        "CHAT_DATABASE_URL": url,
        "CHAT_LISTEN": "127.0.0.1:0" if workers == 1 else f"127.0.0.1:{free_port()}",
        "CHAT_LLM_PROVIDER": "ollama",
        "CHAT_LLM_URL": upstream_url,
        "CHAT_DEFAULT_MODEL": MODEL,
        "CHAT_MAX_REPLY_TOKENS": "100000",
        "CHAT_RATE_LIMIT_PER_MINUTE": "0",  # one bench user opens up to 1,000 streams: capacity is measured
        "CHAT_MAX_CONCURRENT_STREAMS": "0",
        "CHAT_LOG_LEVEL": "WARNING",
        "CHAT_SHUTDOWN_GRACE_SECONDS": "1",
        "CHAT_WORKERS": str(workers),
    }
    await asyncio.to_thread(chat_service, "migrate", env=env)
    key = (await asyncio.to_thread(chat_service, "keys", "create", "--user", "bench", env=env)).strip().splitlines()[-1]
    server = Process([str(BIN / "chat-service"), "serve"], workdir / f"service-{tag}.log", env)
    try:
        line = server.ready("listening on")
        target = Target(line.rsplit(" ", 1)[1], key, server.process.pid)
        await target.open()
        try:
            yield target, server
        finally:
            await target.close()
    finally:
        server.stop()
        await postgres_database(name, drop=True)


def chat_service(*args: str, env: dict[str, str]) -> str:
    """`chat-service ARGS` to completion (set-up steps, before anything is measured)."""
    done = subprocess.run(
        [str(BIN / "chat-service"), *args], env={**os.environ, **env}, check=True, capture_output=True, text=True
    )
    return done.stdout


@contextlib.contextmanager
def profiled(pid: int, out: Path | None, seconds: float) -> Iterator[None]:
    """py-spy record of the service while the block runs (when `out` is given); with PACED_NATIVE=1 it samples
    native frames too (grpc's Cython core, uvloop, protobuf: what a Python-only profile books to the caller)."""
    if out is None:
        yield
        return
    native = ["--native"] if os.environ.get("PACED_NATIVE") else []
    spy = subprocess.Popen(
        [str(BIN / "py-spy"), "record", "--pid", str(pid), "--duration", str(int(seconds)), "--format", "raw",
         "--output", str(out), "--subprocesses", "--rate", "200", *native],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield
    finally:
        spy.wait(timeout=seconds + 30)


# ------------------------------------------------------------------------------------------------ the run


async def run(levels: list[int], workers: list[int], quick: bool, profile: Path | None) -> dict[str, Any]:
    results: dict[str, Any] = {"levels": levels, "rate": RATE, "tokens": TOKENS}
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"chat-bench-paced-{os.getpid()}"
    workdir.mkdir(parents=True, exist_ok=True)
    with upstream(workdir) as url:
        await direct_trial(url, 50)  # warm-up
        results["direct"] = {str(n): (await direct_trial(url, n)).summary() for n in levels}
        async with bench_server(workdir, "relay", "--upstream", url) as (target, server):
            print("  relay floor", file=sys.stderr, flush=True)
            await service_trial(target, server, 50)
            results["relay"] = {"levels": {str(n): (await service_trial(target, server, n)).summary() for n in levels}}
        for count in workers:
            key = f"service-{count}w"
            async with service(workdir, url, count, key) as (target, server):
                print(f"  {key}: warm-up", file=sys.stderr, flush=True)
                await service_trial(target, server, 50)
                by_level = {}
                for n in levels:
                    print(f"  {key}: {n} streams", file=sys.stderr, flush=True)
                    out = profile / f"{key}-{n}.txt" if profile and n == 200 else None
                    by_level[str(n)] = (await service_trial(target, server, n, profile=out)).summary()
                results[key] = {"levels": by_level}
                if count == workers[0]:
                    results[key].update(await first_token_overhead(url, target, server))
                    results[key]["unary_rps"] = await unary(target, seconds=2 if quick else 4)
                    burst = await service_trial(target, server, 1000, ramp=0.0)
                    results[key]["burst_1000"] = burst.summary()
    results["unary_baseline_rps"] = await unary_baseline(workdir, seconds=2 if quick else 4)
    return results


async def first_token_overhead(url: str, target: Target, server: Process, rounds: int = 15) -> dict[str, float]:
    """Time to first token at one stream, direct and through the service, in alternating rounds (a machine that
    grows busier or quieter during the run moves both alike); the overhead is the median of each round's
    difference."""
    direct, service, overhead = [], [], []
    for _ in range(rounds):
        floor = (await direct_trial(url, 1)).summary()["ttft_p50_ms"]
        served = (await service_trial(target, server, 1)).summary()["ttft_p50_ms"]
        direct.append(floor)
        service.append(served)
        overhead.append(served - floor)
    return {
        "ttft_1": statistics.median(service),
        "direct_ttft_1": statistics.median(direct),
        "ttft_overhead_1": statistics.median(overhead),
    }


@contextlib.asynccontextmanager
async def bench_server(workdir: Path, kind: str, *args: str) -> AsyncIterator[tuple[Target, Process]]:
    """A server of tests/bench/servers.py (`kind`: `relay`, the floor of the paced path — raw grpc.aio relaying
    the upstream with aiohttp —, or `rawsql`, the unary baseline), and channels to it."""
    server = Process([sys.executable, "-m", "tests.bench.servers", kind, *args], workdir / f"{kind}.log")
    try:
        port = server.ready("READY").split()[1]
        target = Target(f"127.0.0.1:{port}", "-", server.process.pid)
        await target.open()
        try:
            yield target, server
        finally:
            await target.close()
    finally:
        server.stop()


async def unary_baseline(workdir: Path, *, seconds: float) -> float:
    """Raw grpc.aio + asyncpg running the service's SQL for CreateConversation and GetConversation."""
    name = f"chat_bench_rawsql_{os.getpid()}"
    url = await postgres_database(name)
    await asyncio.to_thread(chat_service, "migrate", env={"CHAT_DATABASE_URL": url})
    try:
        async with bench_server(workdir, "rawsql", "--database", url) as (target, _server):
            return await unary(target, seconds=seconds)
    finally:
        await postgres_database(name, drop=True)


# ------------------------------------------------------------------------------------------------ report


def capacity(levels: dict[str, dict[str, Any]]) -> int:
    """The most streams with p99 added latency < 100 ms, ≥ 95 % of the expected tokens, all finished."""
    good = [
        int(n)
        for n, s in levels.items()
        if s["p99_ms"] < 100 and s["delivered_ratio"] >= 0.95 and not s["incomplete_streams"]
    ]
    return max(good, default=0)


def targets(results: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    one = results.get("service-1w")
    rows: list[tuple[str, str, bool | None]] = []
    if not one:
        return rows
    at_200 = one["levels"].get("200", {})
    cpu = at_200.get("cpu_us_per_token")
    floor = results.get("relay", {}).get("levels", {}).get("200", {}).get("cpu_us_per_token")
    measured = f"{cpu:.0f} µs" if cpu else "-"
    if cpu and floor:
        measured += f" (relay floor {floor:.0f} µs: {cpu / floor:.1f}x)"
    rows.append(("1. CPU per token ≤ 80 µs (200 streams)", measured, cpu is not None and cpu <= 80))
    cap1 = capacity(one["levels"])
    rows.append(("2a. capacity ≥ 500 streams (1 process)", f"{cap1}", cap1 >= 500))
    two = results.get("service-2w")
    if two:
        cap2 = capacity(two["levels"])
        ratio = cap2 / cap1 if cap1 else 0.0
        rows.append(("2b. two processes ≥ 1.8x one", f"{cap2} = {ratio:.2f}x", ratio >= 1.8))
    overhead = one["ttft_overhead_1"]
    rows.append(("4. TTFT overhead at 1 stream ≤ 3 ms", f"{overhead:.2f} ms", overhead <= 3))
    unary_ratio = one["unary_rps"] / results["unary_baseline_rps"]
    rows.append(
        (
            "5. unary ≥ 0.5x raw grpc.aio + asyncpg",
            f"{one['unary_rps']:,.0f} vs {results['unary_baseline_rps']:,.0f} rps = {unary_ratio:.2f}x",
            unary_ratio >= 0.5,
        )
    )
    burst = one["burst_1000"]
    unavailable = burst["errors"].get("UNAVAILABLE", 0)
    rows.append(
        ("6. burst of 1,000 starts: no UNAVAILABLE", f"{unavailable} UNAVAILABLE, {burst['errors']}", not unavailable)
    )
    return rows


def table(results: dict[str, Any]) -> str:
    columns = ["direct"] + [k for k in ("relay", "service-1w", "service-2w") if k in results]
    head = "| streams | " + " | ".join(columns) + " |"
    lines = [head, "|" + "---|" * (len(columns) + 1)]
    for n in results["levels"]:
        cells = []
        for column in columns:
            level = results[column] if column == "direct" else results[column]["levels"]
            s = level.get(str(n))
            if s is None:
                cells.append("-")
                continue
            cell = f"{s['tokens_per_s']:,.0f} tok/s ({s['delivered_ratio']:.0%}), p99 +{s['p99_ms']:.1f} ms"
            cell += f", TTFT p50 {s['ttft_p50_ms']:.0f} ms"
            if s.get("cpu_us_per_token"):
                cell += f", {s['cpu_us_per_token']:.0f} µs/token, {s['cpu_cores']:.2f} core"
            if s["incomplete_streams"]:
                cell += f", {s['incomplete_streams']} unfinished"
            cells.append(cell)
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(results: dict[str, Any]) -> str:
    lines = [table(results), "", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {t} | {v} | {'yes' if ok else 'no'} |" for t, v, ok in targets(results)]
    return "\n".join(lines)


def rewrite_readme(text: str, command: str) -> None:
    start, end = "<!-- bench:paced -->", "<!-- /bench:paced -->"
    readme = README.read_text()
    if start not in readme or end not in readme:
        return
    before, rest = readme.split(start, 1)
    _, after = rest.split(end, 1)
    README.write_text(f"{before}{start}\n`{command}`, {datetime.now(UTC):%Y-%m-%d}:\n\n{text}\n{end}{after}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="levels 1, 20, 200, 500 only")
    parser.add_argument("--levels", default="")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--profile", type=Path, default=None, help="py-spy raw profiles at 200 streams, into DIR")
    parser.add_argument("--no-readme", action="store_true")
    args = parser.parse_args()
    levels = [int(n) for n in args.levels.split(",")] if args.levels else (
        [1, 20, 200, 500] if args.quick else [1, 20, 50, 200, 500, 1000]
    )  # fmt: skip
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    results = asyncio.run(run(levels, [int(w) for w in args.workers.split(",")], args.quick, args.profile))
    results["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
    text = report(results)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (RESULTS / f"paced-{stamp}.json").write_text(json.dumps(results, indent=2))
    (RESULTS / "paced-latest.json").write_text(json.dumps(results, indent=2))
    if not args.no_readme:
        rewrite_readme(text, " ".join(["python -m tests.bench.paced", *sys.argv[1:]]))  # the command as run


if __name__ == "__main__":
    main()
