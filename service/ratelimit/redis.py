"""Per-user limits shared by every replica through Redis (CHAT_REDIS_URL), one atomic Lua script a check.

- The request rate is the replica token bucket's exact equivalent (GCRA: one number a user, the time their
  bucket would be full again), so the limits mean the same with and without Redis.
- Open streams are a sorted set a user: stream id -> expiry. The replica holding a stream pushes its expiry
  on every third of CHAT_REDIS_STREAM_TTL_SECONDS and removes it when the stream ends; a replica that dies
  stops pushing, so its streams free themselves within the TTL.
- Redis unreachable (or slower than CHAT_REDIS_TIMEOUT_SECONDS): the replica's own limits answer instead
  (one warning; Redis is asked again a second later, and its return logged). Never a refusal, never a failed
  RPC because of Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from service.ratelimit.limits import StreamSlot, rate_exceeded, streams_exceeded
from service.ratelimit.replica import RateLimiter

logger = logging.getLogger(__name__)

RETRY_SECONDS = 1.0  # after a failure, how long the replica's own limits answer before Redis is tried again
MAX_CONNECTIONS = 64  # per replica; a check holds one for well under a millisecond
BATCH = 500  # checks, or stream renewals, in one script call
_ERRORS = (RedisError, OSError, asyncio.TimeoutError)

# GCRA, for each user in KEYS: the key holds the time (ms) at which the user's bucket is full again; each
# request moves it one `interval` (ARGV[1]: 60 s / the limit) later, and may not move it more than `burst`
# (ARGV[2]) intervals past now. Per key, 0 = taken, else the milliseconds until a request will be. Redis's
# clock, so every replica agrees; keys in order, so a user twice in one call is counted twice.
RATE_SCRIPT = """
local clock = redis.call('TIME')
local now = clock[1] * 1000 + clock[2] / 1000
local interval = tonumber(ARGV[1])
local ahead = interval * tonumber(ARGV[2])
local waits = {}
for i, key in ipairs(KEYS) do
  local full_at = math.max(tonumber(redis.call('GET', key)) or 0, now) + interval
  if full_at - ahead > now then
    waits[i] = math.ceil(full_at - ahead - now)
  else
    redis.call('SET', key, string.format('%.3f', full_at), 'PX', math.max(1, math.ceil(full_at - now)))
    waits[i] = 0
  end
end
return waits
"""

# KEYS[1]: the user's open streams, id -> expiry (ms). ARGV: the limit, the TTL (ms), the new stream's id.
# 1 = taken. The key itself expires with its last member, so a user's streams leave nothing behind.
ACQUIRE_SCRIPT = """
local clock = redis.call('TIME')
local now = clock[1] * 1000 + math.floor(clock[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS[i] holds ARGV[i + 1], a stream still open on this replica; ARGV[1]: the TTL (ms). Added back if gone
# (Redis restarted, or an outage outlived the TTL): the stream is open, so it counts.
REFRESH_SCRIPT = """
local clock = redis.call('TIME')
local now = clock[1] * 1000 + math.floor(clock[2] / 1000)
local ttl = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now + ttl, ARGV[i + 1])
  redis.call('PEXPIRE', key, ttl)
end
return #KEYS
"""


class RedisLimits:
    """`UserLimits` kept in Redis under `prefix`, with `local` (this replica's own) answering while Redis is
    unreachable. `local` also counts this replica's streams all along: its refusal stands either way (the
    streams it counts are open), and it is up to date when Redis goes away."""

    def __init__(
        self,
        redis: Redis,
        local: RateLimiter,
        *,
        prefix: str,
        per_minute: int,
        max_streams: int,
        stream_ttl: float,
        retry_seconds: float = RETRY_SECONDS,
    ) -> None:
        self._redis = redis
        self._local = local
        self._prefix = prefix
        self._per_minute = per_minute
        self._max_streams = max_streams
        self._ttl_ms = max(1, round(stream_ttl * 1000))
        self._health = _Health(retry_seconds)
        rate = redis.register_script(RATE_SCRIPT)
        self._rates = _Batches(lambda keys: rate(keys=keys, args=[60_000 / max(1, per_minute), per_minute]))
        self._acquire = redis.register_script(ACQUIRE_SCRIPT)
        self._keeper = _Keeper(redis, redis.register_script(REFRESH_SCRIPT), self._health, ttl_ms=self._ttl_ms)

    @classmethod
    def connect(
        cls,
        url: str,
        local: RateLimiter,
        *,
        timeout: float,
        prefix: str,
        per_minute: int,
        max_streams: int,
        stream_ttl: float,
    ) -> RedisLimits:
        """Connections are made on first use: a replica starts (and serves, on its own limits) without Redis."""
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=timeout,  # waiting for a free connection
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1),  # one retry, at once: a pooled connection Redis closed is no outage
        )
        return cls(
            Redis.from_pool(pool),
            local,
            prefix=prefix,
            per_minute=per_minute,
            max_streams=max_streams,
            stream_ttl=stream_ttl,
        )

    async def check_request(self, user: str) -> None:
        if not self._per_minute:
            return
        if self._health.usable():
            try:
                wait_ms = await self._rates.ask(self._key("rate", user))
            except _ERRORS as error:
                self._health.failed(error)
            else:
                self._health.succeeded()
                if wait_ms:
                    raise rate_exceeded(self._per_minute, int(wait_ms) / 1000)
                return
        self._local.check_request(user)

    async def open_stream(self, user: str) -> StreamSlot:
        self._local.open_stream(user)
        if not self._max_streams or not self._health.usable():
            return StreamSlot(user)
        slot = StreamSlot(user, uuid.uuid4().hex)
        key = self._key("streams", user)
        try:
            taken = await self._acquire(keys=[key], args=[self._max_streams, self._ttl_ms, slot.stream_id])
        except _ERRORS as error:
            self._health.failed(error)
            self._keeper.release(key, slot.stream_id)  # the script may have run before the answer was lost
            return StreamSlot(user)
        except BaseException:  # cancelled while asking: the same
            self._local.close_stream(user)
            self._keeper.release(key, slot.stream_id)
            raise
        self._health.succeeded()
        if not taken:
            self._local.close_stream(user)
            raise streams_exceeded(self._max_streams)
        self._keeper.hold(key, slot.stream_id)
        return slot

    def close_stream(self, slot: StreamSlot) -> None:
        self._local.close_stream(slot.user)
        if slot.stream_id:
            self._keeper.release(self._key("streams", slot.user), slot.stream_id)

    @property
    def open_streams(self) -> int:
        return self._local.open_streams

    async def aclose(self) -> None:
        await self._rates.finish()
        await self._keeper.stop()
        await self._redis.aclose()

    def _key(self, kind: str, user: str) -> str:
        return f"{self._prefix}{kind}:{user}"


class _Batches:
    """Rate checks go to Redis one script call at a time: those asked while a call is out go together in the
    next. One at a time costs a lone check nothing, and under load a replica pays one round trip (and one
    command to encode and parse) per batch, not per request: a batch holds what arrived in one round trip."""

    def __init__(self, send: Callable[[list[str]], Awaitable[list[int]]]) -> None:
        self._send = send
        self._waiting: list[tuple[str, asyncio.Future[int]]] = []
        self._sender: asyncio.Task[None] | None = None

    async def ask(self, key: str) -> int:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting.append((key, future))
        if self._sender is None:
            self._sender = asyncio.get_running_loop().create_task(self._send_all())
        return await future

    async def finish(self) -> None:
        if self._sender is not None:
            await asyncio.gather(self._sender, return_exceptions=True)

    async def _send_all(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:BATCH], self._waiting[BATCH:]
                await self._run(batch)
        finally:
            self._sender = None

    async def _run(self, batch: list[tuple[str, asyncio.Future[int]]]) -> None:
        try:
            waits = await self._send([key for key, _ in batch])
        except Exception as error:  # each caller decides (and a caller that has left is not told)
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        except BaseException:
            for _, future in batch:
                future.cancel()
            raise
        for (_, future), wait in zip(batch, waits, strict=True):
            if not future.done():
                future.set_result(int(wait))


class _Health:
    """Whether to ask Redis: yes until it fails, then no for `retry_seconds`, then one caller at a time finds
    out. Logs the outage once and the return once."""

    def __init__(self, retry_seconds: float) -> None:
        self._retry_seconds = retry_seconds
        self._down = False
        self._next_try = 0.0

    def usable(self) -> bool:
        if not self._down:
            return True
        now = time.monotonic()
        if now < self._next_try:
            return False
        self._next_try = now + self._retry_seconds  # this caller tries; the others stay local meanwhile
        return True

    def failed(self, error: BaseException) -> None:
        self._next_try = time.monotonic() + self._retry_seconds
        if not self._down:
            self._down = True
            logger.warning(
                "redis unreachable: rate and stream limits are per replica until it is back",
                extra={"error": f"{type(error).__name__}: {error}"},
            )

    def succeeded(self) -> None:
        if self._down:
            self._down = False
            logger.warning("redis reachable again: rate and stream limits are shared by the replicas again")


class _Keeper:
    """This replica's streams in Redis: renewed while open, removed once closed — by one task, in order, so a
    renewal sent before a removal can never bring a closed stream back."""

    def __init__(self, redis: Redis, refresh: AsyncScript, health: _Health, *, ttl_ms: int) -> None:
        self._redis = redis
        self._refresh = refresh
        self._health = health
        self._ttl_ms = ttl_ms
        self._held: dict[str, str] = {}  # stream id -> its user's key
        self._released: dict[str, tuple[str, float]] = {}  # stream id -> (key, when closed)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def hold(self, key: str, stream_id: str) -> None:
        self._held[stream_id] = key
        self._start()

    def release(self, key: str, stream_id: str) -> None:
        self._held.pop(stream_id, None)
        self._released[stream_id] = (key, time.monotonic())
        self._start()
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._released:  # streams that ended during shutdown: free them now rather than at their expiry
            with contextlib.suppress(*_ERRORS):
                async with asyncio.timeout(1.0):
                    await self._remove()

    def _start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="redis-limits-keeper")

    async def _run(self) -> None:
        period = self._ttl_ms / 3000
        renew_at = time.monotonic() + period
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, renew_at - time.monotonic())):
                    await self._wake.wait()
            self._wake.clear()
            if time.monotonic() >= renew_at:
                renew_at = time.monotonic() + period
                if self._held:
                    await self._guarded(self._renew)
            if self._released:
                await self._guarded(self._remove)

    async def _guarded(self, operation: Callable[[], Awaitable[None]]) -> None:
        if not self._health.usable():
            self._forget_expired()
            return
        try:
            await operation()
        except _ERRORS as error:
            self._health.failed(error)
            self._forget_expired()
        else:
            self._health.succeeded()

    async def _renew(self) -> None:
        held = list(self._held.items())
        for start in range(0, len(held), BATCH):
            batch = held[start : start + BATCH]
            await self._refresh(keys=[key for _, key in batch], args=[self._ttl_ms, *(sid for sid, _ in batch)])

    async def _remove(self) -> None:
        released = list(self._released.items())
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream_id, (key, _) in released:
                pipe.zrem(key, stream_id)
            await pipe.execute()
        for stream_id, _ in released:
            self._released.pop(stream_id, None)

    def _forget_expired(self) -> None:
        """Removals Redis could not take: once the TTL has passed the entries are gone by themselves."""
        too_old = time.monotonic() - self._ttl_ms / 1000
        for stream_id in [s for s, (_, closed) in self._released.items() if closed < too_old]:
            del self._released[stream_id]
