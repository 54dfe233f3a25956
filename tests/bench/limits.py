"""What keeping the limits in Redis adds to a call: `python -m tests.bench.limits [--redis URL] [--rounds N]`.

1. The check alone, in this process: `check_request` per replica (memory) and through Redis, one at a time
   (latency) and 64 at once (checks a second).
2. A whole unary RPC (ListModels: no database) against two `chat-service serve` processes, one with
   CHAT_REDIS_URL and one without, measured in alternating rounds (the machine may be shared): latency one
   call at a time, calls a second from 64 callers, and CPU time per call of the serving process and of
   redis-server (CPU time barely depends on what else the machine runs; wall time does).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import psutil
import redis

from chat.v1 import chat_pb2 as pb
from chat.v1 import chat_pb2_grpc
from service.ratelimit.limits import UserLimits
from service.ratelimit.redis import RedisLimits
from service.ratelimit.replica import RateLimiter, ReplicaLimits
from tests.e2e.process import Server, command
from tests.net import free_port

HIGH = 10**9  # a rate no benchmark reaches: every check passes
Call = Callable[[], Awaitable[object]]


def micros(seconds: float) -> str:
    return f"{seconds * 1e6:7.1f} µs"


async def latency(call: Call, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - started)
    return sorted(samples)


async def rate(call: Call, *, callers: int = 64, seconds: float = 3.0) -> int:
    """Calls made by `callers` concurrent callers in `seconds`."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def caller() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await call()
            done += 1

    await asyncio.gather(*(caller() for _ in range(callers)))
    return done


def checker(limiter: UserLimits) -> Call:
    """A check for one of 100 users in turn."""
    users = iter(range(10**12))
    return lambda: limiter.check_request(f"user-{next(users) % 100}")


async def checks(redis_url: str, count: int) -> None:
    shared = RedisLimits.connect(
        redis_url,
        RateLimiter(per_minute=HIGH, max_streams=0),
        timeout=0.25,
        prefix=f"bench:{uuid.uuid4().hex[:8]}:",
        per_minute=HIGH,
        max_streams=0,
        stream_ttl=15,
    )
    local = ReplicaLimits(RateLimiter(per_minute=HIGH, max_streams=0))
    for name, limiter in (("per replica", local), ("redis", shared)):
        check = checker(limiter)
        await latency(check, 200)  # warm: connections, the script loaded
        samples = await latency(check, count)
        per_second = await rate(check) / 3.0
        print(f"check_request  {name:12} p50 {micros(statistics.median(samples))}  {per_second:9.0f} checks/s")
    await shared.aclose()


@contextlib.asynccontextmanager
async def server(root: Path, env: dict[str, str]) -> AsyncIterator[tuple[Call, psutil.Process]]:
    serving = Server(env={**env, "CHAT_LISTEN": f"127.0.0.1:{free_port()}"}, log=root / "server.log")
    serving.start()
    try:
        key = command("keys", "create", "--user", "bench", env=serving.env).strip().splitlines()[-1]
        auth = (("authorization", f"Bearer {key}"),)
        assert serving.process is not None
        async with grpc.aio.insecure_channel(serving.env["CHAT_LISTEN"]) as channel:
            stub = chat_pb2_grpc.ChatServiceStub(channel)
            yield (lambda: stub.ListModels(pb.ListModelsRequest(), metadata=auth)), psutil.Process(serving.process.pid)
    finally:
        serving.stop()


def cpu_seconds(before: Any, after: Any) -> float:
    return float(after.user + after.system - before.user - before.system)


def redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def rpcs(redis_url: str, count: int, rounds: int) -> None:
    results: dict[str, dict[str, list[float]]] = {}
    monitor = redis.Redis.from_url(redis_url)
    with tempfile.TemporaryDirectory() as directory:
        async with contextlib.AsyncExitStack() as stack:
            root = Path(directory)
            base = {
                "CHAT_DATABASE_URL": f"sqlite+aiosqlite:///{root}/bench.db",
                "CHAT_LLM_PROVIDER": "fake",
                "CHAT_AUTO_MIGRATE": "true",
                "CHAT_LOG_LEVEL": "WARNING",  # no access-log line per call
                "CHAT_RATE_LIMIT_PER_MINUTE": str(HIGH),
                "CHAT_REDIS_KEY_PREFIX": f"bench:{uuid.uuid4().hex[:8]}:",
            }
            targets = {
                "per replica": await stack.enter_async_context(server(root, base)),
                "redis": await stack.enter_async_context(server(root, {**base, "CHAT_REDIS_URL": redis_url})),
            }
            for call, _ in targets.values():
                await latency(call, 300)  # warm
            for _ in range(rounds):
                for name, (call, process) in targets.items():
                    found = results.setdefault(name, {})
                    cpu = process.cpu_times()
                    found.setdefault("p50", []).append(statistics.median(await latency(call, count)))
                    after = process.cpu_times()
                    found.setdefault("cpu alone", []).append(cpu_seconds(cpu, after) / count)
                    cpu, redis_before = process.cpu_times(), redis_cpu(monitor)
                    calls = await rate(call)
                    after = process.cpu_times()
                    found.setdefault("calls/s", []).append(calls / 3.0)
                    found.setdefault("cpu", []).append(cpu_seconds(cpu, after) / calls)
                    found.setdefault("redis cpu", []).append((redis_cpu(monitor) - redis_before) / calls)
    monitor.close()
    for name, found in results.items():
        print(
            f"ListModels RPC {name:12} one at a time: p50 {micros(statistics.median(found['p50']))}"
            f" server CPU {micros(statistics.median(found['cpu alone']))}/call;"
            f"  64 callers: {statistics.median(found['calls/s']):6.0f} calls/s"
            f"  server CPU {micros(statistics.median(found['cpu']))}/call"
            f"  redis-server CPU {micros(statistics.median(found['redis cpu']))}/call"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis", default=os.environ.get("CHAT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(checks(args.redis, args.calls))
    asyncio.run(rpcs(args.redis, args.calls, args.rounds))


if __name__ == "__main__":
    main()
