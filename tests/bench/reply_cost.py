"""What one reply costs the service apart from its tokens: its start (the RPC, auth, the start transaction, the
model request) and its end (the final write, the last messages), measured with one-token replies from the paced
Ollama-wire server answering at once, through `chat-service serve` on Postgres.

    python -m tests.bench.reply_cost [--replies 200] [--callers 8] [--seconds 15]

Sequential: `--replies` replies one after another, each in a new conversation (no history), the median time to
the first delta and to the stream's end, next to the model server read directly (its first line). Concurrent:
`--callers` callers replying for `--seconds`, each reply in a new conversation: replies/s and the service's CPU
per reply (its user+system time over the run / replies). The paced benchmark's 60-token replies pay this once
each, on top of their tokens. Prints a table, writes JSON to tests/bench/results/reply-cost-*.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from chat.v1 import chat_pb2 as pb
from tests.bench.__main__ import RESULTS
from tests.bench.clock_provider import MODEL
from tests.bench.paced import conversations, service, upstream
from tests.bench.scenarios import Target

INSTANT = "rate=0 tokens=1"  # the paced server's instruction: one token, at once
WARM_UP = 50
MAX_RATE = 400  # replies/s: more than one process makes here (~150)


async def reply(target: Target, index: int, conversation_id: str) -> tuple[float, float]:
    """One reply read to its end: (seconds to the first delta, seconds to the end)."""
    request = pb.StreamReplyRequest(conversation_id=conversation_id, content=INSTANT)
    started, first = time.perf_counter(), 0.0
    async for response in target.stub(index).StreamReply(request, metadata=target.metadata):
        if not first and response.event.HasField("delta"):
            first = time.perf_counter() - started
    return first, time.perf_counter() - started


async def direct_first_lines(url: str, count: int) -> list[float]:
    body = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": INSTANT}], "stream": True})
    firsts = []
    async with aiohttp.ClientSession() as session:
        for _ in range(count):
            started = time.perf_counter()
            async with session.post(url + "/api/chat", data=body) as response:
                await response.content.readline()
                firsts.append(time.perf_counter() - started)
                await response.read()
    return firsts


async def run(replies: int, callers: int, seconds: float) -> dict[str, Any]:
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"chat-bench-reply-cost-{os.getpid()}"
    workdir.mkdir(parents=True, exist_ok=True)
    with upstream(workdir) as url:
        direct = (await direct_first_lines(url, WARM_UP + replies))[WARM_UP:]
        async with service(workdir, url, 1, "reply-cost") as (target, server):
            # A conversation per reply, made first; a concurrent run that uses them all up ends there.
            pool = await conversations(target, WARM_UP + replies + int(seconds * MAX_RATE))
            for _ in range(WARM_UP):
                await reply(target, 0, pool.pop())
            sequential = [await reply(target, 0, pool.pop()) for _ in range(replies)]
            done, deadline = 0, time.perf_counter() + seconds

            async def caller(index: int) -> None:
                nonlocal done
                while time.perf_counter() < deadline and pool:
                    await reply(target, index, pool.pop())
                    done += 1

            cpu, started = server.cpu_seconds(), time.perf_counter()
            await asyncio.gather(*(caller(i) for i in range(callers)))
            elapsed, cpu = time.perf_counter() - started, server.cpu_seconds() - cpu
    return {
        "replies": replies,
        "callers": callers,
        "direct_first_line_ms": statistics.median(direct) * 1e3,
        "first_delta_ms": statistics.median(first for first, _ in sequential) * 1e3,
        "end_ms": statistics.median(end for _, end in sequential) * 1e3,
        "concurrent_replies_per_s": done / elapsed,
        "cpu_ms_per_reply": cpu / done * 1e3,
        "cpu_cores": cpu / elapsed,
    }


def report(results: dict[str, Any]) -> str:
    return "\n".join(
        [
            "| one-token replies | measured |",
            "|---|---|",
            f"| model server read directly: first line (p50) | {results['direct_first_line_ms']:.2f} ms |",
            f"| through the service, one at a time: first delta (p50) | {results['first_delta_ms']:.2f} ms |",
            f"| ... the stream's end (p50) | {results['end_ms']:.2f} ms |",
            f"| {results['callers']} callers at once: replies/s | {results['concurrent_replies_per_s']:,.0f} |",
            f"| ... service CPU per reply | {results['cpu_ms_per_reply']:.2f} ms ({results['cpu_cores']:.2f} core) |",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replies", type=int, default=200, help="sequential replies measured")
    parser.add_argument("--callers", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=15.0, help="length of the concurrent run")
    args = parser.parse_args()
    results = asyncio.run(run(args.replies, args.callers, args.seconds))
    print(report(results))
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (RESULTS / f"reply-cost-{stamp}.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
