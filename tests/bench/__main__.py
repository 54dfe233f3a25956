"""`make bench`: chat-service against a raw grpc.aio baseline and the naive design, in one run.

Each server runs in its own process; this process is the client. Prints a table with every target marked
met or not (ratios to the baseline measured in this same run) and writes JSON to tests/bench/results/.

    python -m tests.bench [--quick] [--only raw,service-sqlite,...] [--postgres URL]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from tests.bench import scenarios
from tests.bench.scenarios import Target

RESULTS = Path(__file__).parent / "results"
POSTGRES = os.environ.get("CHAT_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")

# name -> (server kind, database, naive write period)
CONFIGS: dict[str, tuple[str, str, int]] = {
    "raw": ("raw", "", 0),
    "service-sqlite": ("service", "sqlite", 0),
    "service-postgres": ("service", "postgres", 0),
    "naive-token-sqlite": ("naive", "sqlite", 1),
    "naive-token-postgres": ("naive", "postgres", 1),
    "naive-5-sqlite": ("naive", "sqlite", 5),
    "naive-5-postgres": ("naive", "postgres", 5),
}


async def postgres_database(name: str, *, drop: bool = False) -> str:
    admin = create_async_engine(POSTGRES, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            if not drop:
                await conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    finally:
        await admin.dispose()
    return sa.make_url(POSTGRES).set(database=name).render_as_string(hide_password=False)


class ServerProcess:
    """A bench server in a process of its own, which prints `READY <port> <key>` once it serves."""

    def __init__(self, command: list[str], log: Path) -> None:
        self._log = log.open("w")
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self._log, text=True)

    def ready(self, timeout: float = 60) -> tuple[int, str]:
        deadline = time.monotonic() + timeout
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if line.startswith("READY"):
                _, port, key = line.split()
                return int(port), key
            if not line and self.process.poll() is not None:
                break
        raise RuntimeError(f"bench server did not start (see {self._log.name})")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._log.close()


def plan(name: str, quick: bool) -> dict[str, Callable[[Target], Awaitable[dict[str, Any]]]]:
    kind = CONFIGS[name][0]
    capacity_args = {"steps": 2 if quick or kind == "naive" else 4, "start": 100 if quick else 200}
    steps: dict[str, Callable[[Target], Awaitable[dict[str, Any]]]] = {
        "capacity": lambda t: scenarios.capacity(t, **capacity_args),
        "writes": lambda t: scenarios.writes_per_1000_tokens(t),
    }
    if kind in ("raw", "service"):
        steps["throughput"] = lambda t: scenarios.throughput(t, tokens=10_000 if quick else 30_000)
        steps["first_token"] = lambda t: scenarios.first_token(t, samples=50 if quick else 200)
        steps["unary"] = lambda t: scenarios.unary(t, seconds=2 if quick else 4)
        steps["memory"] = lambda t: scenarios.memory(t, streams=300 if quick else 1000)
    if kind == "raw":
        del steps["writes"]
    return steps


async def measure(name: str, quick: bool, workdir: Path) -> dict[str, Any]:
    kind, database, every = CONFIGS[name]
    url = ""
    pg_name = f"chat_bench_{os.getpid()}_{name.replace('-', '_')}"
    if database == "sqlite":
        url = f"sqlite+aiosqlite:///{workdir / (name + '.db')}"
    elif database == "postgres":
        url = await postgres_database(pg_name)
    command = [sys.executable, "-m", "tests.bench.servers", kind, "--database", url, "--every", str(every)]
    server = ServerProcess(command, workdir / f"{name}.log")
    results: dict[str, Any] = {}
    try:
        port, key = await asyncio.to_thread(server.ready)
        target = Target(f"127.0.0.1:{port}", key, server.process.pid)
        await target.open()
        try:
            for step, run in plan(name, quick).items():
                print(f"  {name}: {step} ...", file=sys.stderr, flush=True)
                results[step] = await run(target)
                await asyncio.sleep(1.0)
        finally:
            await target.close()
    finally:
        server.stop()
        if database == "postgres":
            await postgres_database(pg_name, drop=True)
    return results


# --- the report


def get(results: dict[str, Any], config: str, *path: str) -> float | None:
    value: Any = results.get(config)
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return float(value) if isinstance(value, int | float) else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target for each service configuration: measured value, how it compares, met or not."""
    rows: list[dict[str, Any]] = []
    for config in ("service-sqlite", "service-postgres"):
        if config not in results:
            continue

        def row(target: str, value: float | None, shown: str, met: bool | None, _config: str = config) -> None:
            rows.append({"config": _config, "target": target, "value": value, "shown": shown, "met": met})

        streams, raw_streams = get(results, config, "capacity", "streams"), get(results, "raw", "capacity", "streams")
        r = ratio(streams, raw_streams)
        row(
            "1. capacity ≥ 0.8x raw (20 tok/s, p99 < 100 ms)",
            r,
            f"{streams:.0f} vs {raw_streams or 0:.0f} = {r or 0:.2f}x" if streams is not None else "-",
            None if r is None else r >= 0.8,
        )
        tps, raw_tps = (
            get(results, config, "throughput", "tokens_per_s"),
            get(results, "raw", "throughput", "tokens_per_s"),
        )
        r = ratio(tps, raw_tps)
        row(
            "2. single stream ≥ 2x raw msg/s",
            r,
            f"{tps or 0:,.0f} vs {raw_tps or 0:,.0f} = {r or 0:.2f}x",
            None if r is None else r >= 2,
        )
        p50, p99 = (
            get(results, config, "first_token", "overhead_p50_ms"),
            get(results, config, "first_token", "overhead_p99_ms"),
        )
        raw50, raw99 = (
            get(results, "raw", "first_token", "request_p50_ms"),
            get(results, "raw", "first_token", "request_p99_ms"),
        )
        row(
            "3. TTFT overhead p50 ≤ 2 ms, p99 ≤ 10 ms",
            p50,
            f"{p50 or 0:.2f} / {p99 or 0:.2f} ms (raw TTFM {raw50 or 0:.2f} / {raw99 or 0:.2f} ms)",
            None if p50 is None or p99 is None else p50 <= 2 and p99 <= 10,
        )
        writes = get(results, config, "writes", "rows_per_1000_tokens")
        per_s = get(results, config, "writes", "rows_per_s_per_reply")
        naive = [
            get(results, f"naive-{k}-{config.split('-')[1]}", "writes", "rows_per_1000_tokens") for k in ("token", "5")
        ]
        row(
            "4. DB writes ≤ 85 / 1,000 tokens at 50 tok/s (≤ 4/s/reply)",
            writes,
            f"{writes or 0:.0f} (≈{per_s or 0:.1f}/s/reply; naive {naive[0] or 0:.0f} and {naive[1] or 0:.0f})",
            None if writes is None or per_s is None else writes <= 85 and per_s <= 4.5,
        )
        commits = get(results, config, "capacity", "at_capacity", "commits_per_s")
        row(
            "4b. commits/s at capacity (Postgres ceiling ~5k/s)",
            commits,
            f"{commits or 0:,.0f}/s",
            None if commits is None else commits < 2500,
        )
        rps, raw_rps = get(results, config, "unary", "rpcs_per_s"), get(results, "raw", "unary", "rpcs_per_s")
        r = ratio(rps, raw_rps)
        row(
            "5. unary create+get, 64 callers ≥ 0.5x raw",
            r,
            f"{rps or 0:,.0f} vs {raw_rps or 0:,.0f} rps = {r or 0:.2f}x",
            None if r is None else r >= 0.5,
        )
        mb = get(results, config, "memory", "rss_growth_mb_per_1000")
        row(
            "6. RSS growth ≤ 100 MB / 1,000 streams",
            mb,
            f"{mb or 0:.1f} MB (raw {get(results, 'raw', 'memory', 'rss_growth_mb_per_1000') or 0:.1f})",
            None if mb is None else mb <= 100,
        )
    return rows


def comparison(results: dict[str, Any]) -> list[str]:
    lines = [
        "| configuration | capacity (streams) | p99 at capacity | commits/s at capacity | DB rows / 1,000 tokens |",
        "|---|---:|---:|---:|---:|",
    ]
    for config in results:
        streams = get(results, config, "capacity", "streams")
        p99 = get(results, config, "capacity", "at_capacity", "p99_ms")
        commits = get(results, config, "capacity", "at_capacity", "commits_per_s")
        writes = get(results, config, "writes", "rows_per_1000_tokens")

        def show(value: float | None, fmt: str) -> str:
            return "-" if value is None else format(value, fmt)

        lines.append(
            f"| {config} | {show(streams, '.0f')} | {show(p99, '.1f')} ms "
            f"| {show(commits, ',.0f')} | {show(writes, '.0f')} |"
        )
    return lines


def report(results: dict[str, Any]) -> str:
    lines = ["| target | configuration | measured | met |", "|---|---|---|---|"]
    for row in targets(results):
        met = "n/a" if row["met"] is None else ("yes" if row["met"] else "**no**")
        lines.append(f"| {row['target']} | {row['config']} | {row['shown']} | {met} |")
    return "\n".join([*lines, "", *comparison(results)])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller runs (a smoke test of the benchmark)")
    parser.add_argument("--only", default=",".join(CONFIGS), help="comma-separated configurations")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n]
    unknown = set(names) - set(CONFIGS)
    if unknown:
        parser.error(f"unknown configurations: {', '.join(sorted(unknown))}")
    results: dict[str, Any] = {}
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")

    def save() -> None:  # after every configuration: an interrupted run keeps what it measured
        document = {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
            "quick": args.quick,
            "complete": len(results) == len(names),
            "results": results,
            "targets": targets(results),
        }
        for path in (RESULTS / f"{stamp}.json", RESULTS / "latest.json"):
            path.write_text(json.dumps(document, indent=2) + "\n")

    with tempfile.TemporaryDirectory(prefix="chat-bench-") as tmp:
        for name in names:
            print(f"{name}:", file=sys.stderr, flush=True)
            results[name] = await measure(name, args.quick, Path(tmp))
            save()
    print(report(results))
    print(f"\nJSON: {RESULTS / 'latest.json'}")


if __name__ == "__main__":
    asyncio.run(main())
