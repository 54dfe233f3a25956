"""Every reply this replica generates, and every write they make.

A generation is a task owned by the server, not by the RPC that asked for it. This class starts them, stops
them, and is the only writer of their rows:
- the flusher: one transaction per tick for every reply in flight — partial text of replies that grew (never
  per token), lease renewal, and a read-back of which replies someone asked to cancel or took away;
- the final write, retried through database outages.
Both are fenced by the reply's lease (owner + epoch). A replica that lost a lease (paused past it, cut off from
the database, judged dead by a sweeper) finds out on its next write, stops generating, writes nothing, and
hands its readers whatever is stored: a terminal state, once stored, never changes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import TypeVar

from tenacity import RetryCallState

from service.domain import (
    Completion,
    DomainError,
    Lease,
    Message,
    MessageStatus,
    ModelFailed,
    Prompt,
    Unavailable,
    reply_error,
)
from service.ports import Flush, UnitOfWork, UnitOfWorkFactory
from service.replies.buffer import Outcome, ReplyBuffer
from service.replies.generation import Generation, Producer, StreamGate, final_message
from service.retrying import retried

logger = logging.getLogger(__name__)

ABANDONED_MESSAGE = "the replica generating this reply stopped responding"
RESTARTED_MESSAGE = "the service restarted while the reply was being generated"
Continuation = Callable[[UnitOfWork, Message], Awaitable["Prompt | None"]]
UNSTORABLE_MESSAGE = "the reply could not be stored in full"
_MAX_BACKOFF = 5.0
T = TypeVar("T")


class Generations:
    def __init__(
        self,
        uow: UnitOfWorkFactory,
        producer: Producer,
        *,
        replica_id: str,
        clock: Callable[[], datetime],
        flush_interval: float,
        lease_seconds: float,
        on_changed: Callable[[Sequence[str]], None] = lambda ids: None,
        continuation: Continuation | None = None,
        max_continuations: int = 0,
    ) -> None:
        self._uow = uow
        self._producer = producer
        self._replica_id = replica_id
        self._clock = clock
        self._interval = flush_interval
        self._lease = timedelta(seconds=lease_seconds)
        self._on_changed = on_changed
        self._sweep_every = max(1, round(lease_seconds / 2 / flush_interval))
        self._live: dict[str, Generation] = {}
        self._continuation = continuation
        self._claiming: set[str] = set()
        self._max_continuations = max_continuations if continuation is not None else 0
        self._closing = False
        self.writes = 0  # rows flushed, for the benchmarks
        self.commits = 0  # flush transactions

    # ------------------------------------------------------------------------------------------ registry

    def __len__(self) -> int:
        return len(self._live)

    def get(self, message_id: str) -> Generation | None:
        return self._live.get(message_id)

    def in_conversation(self, conversation_id: str) -> list[Generation]:
        return [g for g in self._live.values() if g.message.conversation_id == conversation_id]

    @property
    def model_streams(self) -> StreamGate:
        """The gate on concurrent model calls (for the metrics)."""
        return self._producer.gate

    def new_lease(self, now: datetime) -> Lease:
        return Lease(self._replica_id, 1, now + self._lease)

    def launch(self, message: Message, prompt: Prompt, lease: Lease) -> Generation:
        """Start generating `message` (STREAMING under `lease`; a continued one holds its stored text already)."""
        generation = Generation(
            message, prompt, ReplyBuffer(message.content), lease, flushed_length=len(message.content)
        )
        self._live[message.id] = generation
        generation.task = asyncio.create_task(self._drive(generation), name=f"generation-{message.id}")
        return generation

    async def close(self, grace: float) -> None:
        """Let generations finish within `grace` seconds, then end the rest INTERRUPTED."""
        self._closing = True
        tasks = [g.task for g in self._live.values() if g.task]
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=grace)
        for generation in list(self._live.values()):
            generation.stop(MessageStatus.INTERRUPTED)
        if pending:
            await asyncio.wait(pending, timeout=max(grace, 5.0))

    # ------------------------------------------------------------------------------------------ one reply

    async def _drive(self, generation: Generation) -> None:
        """Produce, store the end (or, fenced, read what is stored), then release every reader."""
        outcome: Outcome | None = None
        try:
            completion, error = await self._produce(generation)
            if generation.fenced:
                outcome = await self._stored_outcome(generation)
            else:
                final = final_message(generation, completion=completion, error=error, now=self._clock())
                outcome = await self._finish(generation, final)
        finally:
            if outcome is None:  # the task itself was cancelled (a hard shutdown): readers must not hang
                final = final_message(generation, completion=None, error=None, now=self._clock())
                outcome = Outcome(final, Unavailable("the service stopped while the reply was being generated"))
            self._live.pop(generation.id, None)
            generation.buffer.close(outcome)
            self._on_changed([generation.id])

    async def _produce(self, generation: Generation) -> tuple[Completion | None, DomainError | None]:
        if generation.stop_status is not None:  # stopped before the model was called
            return None, None
        generation.producer = asyncio.create_task(self._producer.run(generation), name=f"produce-{generation.id}")
        try:
            return await asyncio.shield(generation.producer), None
        except asyncio.CancelledError:
            if not generation.producer.cancelled():
                raise  # the drive task itself was cancelled
            return None, None
        except DomainError as error:
            return None, error
        except Exception:
            logger.exception("generation %s failed unexpectedly", generation.id)
            return None, ModelFailed("the reply failed unexpectedly")

    async def _finish(self, generation: Generation, final: Message) -> Outcome:
        """Store the final state under the lease, retrying through database outages (the text stays here; readers
        wait for the stored state). A row the database refuses (it should not happen: the text is cleaned and
        bounded) is stored FAILED with the text it last accepted, then without text. Fenced: the outcome is what
        whoever took the reply stored."""
        candidates = [
            final,
            dataclasses.replace(
                final,
                content=final.content[: generation.flushed_length],
                status=MessageStatus.FAILED,
                error_message=UNSTORABLE_MESSAGE,
                error_reason=ModelFailed.reason,
            ),
        ]
        candidates.append(dataclasses.replace(candidates[1], content=""))

        async def store() -> tuple[Message, bool, Message | None]:
            """Writes the first candidate: (it, whether it was written, else what is stored: None if deleted)."""
            candidate = candidates[0]
            try:
                async with self._uow(autocommit=True) as uow:  # one statement: one round trip
                    written = await uow.messages.finish(candidate, generation.lease)
                    stored = None if written else await uow.messages.get(generation.id)
                    await uow.commit()
            except Unavailable:
                raise
            except Exception as error:
                logger.exception("the database refused the end of reply %s", generation.id)
                if len(candidates) > 1:
                    candidates.pop(0)
                raise _Refused from error
            return candidate, written, stored

        candidate, written, stored = await _persistently(store, f"storing the end of reply {generation.id}")
        if written:
            return _outcome(candidate)
        generation.fenced = True
        logger.warning("reply %s was ended or taken by another replica; not writing it", generation.id)
        return _fenced(stored) if stored else _deleted(candidate)

    async def _stored_outcome(self, generation: Generation) -> Outcome:
        async def read() -> Message | None:
            async with self._uow() as uow:
                return await uow.messages.get(generation.id)

        stored = await _persistently(read, f"reading reply {generation.id}")
        final = final_message(generation, completion=None, error=None, now=self._clock())
        return _fenced(stored) if stored else _deleted(final)

    # ------------------------------------------------------------------------------------------ flushing

    async def run_flusher(self) -> None:
        """Tick until cancelled; a failing tick is retried with exponential backoff (a database outage slows the
        ticks down but never stops them), and nothing is lost: unflushed text stays in the buffers."""
        ticks = 0
        while True:
            await asyncio.sleep(self._interval)
            ticks += 1
            sweep = ticks % self._sweep_every == 0
            await _persistently(
                functools.partial(self.tick, sweep=sweep), "flush", initial=self._interval, any_error=True
            )

    async def tick(self, *, sweep: bool = False) -> None:
        """One flush transaction: write what grew, renew leases, learn of cancels and lost leases; with `sweep`,
        end replies whose lease expired (their replica died) INTERRUPTED."""
        now = self._clock()
        renew_before, expires = now + self._lease / 2, now + self._lease
        generations = [g for g in self._live.values() if g.buffer.outcome is None and not g.fenced]
        due = [g for g in generations if g.buffer.length != g.flushed_length or g.lease.expires_at <= renew_before]
        lengths = [g.buffer.length for g in due]
        batch = [Flush(g.id, g.buffer.text, g.lease, expires, now) for g in due]
        async with self._uow() as uow:
            if batch:
                await uow.messages.flush(batch)
            held = await uow.messages.leased(self._replica_id) if generations else {}
            await uow.commit()
        self.commits += 1
        self.writes += len(batch)
        for generation, length in zip(due, lengths, strict=True):
            state = held.get(generation.id)
            if state is not None and state.epoch == generation.lease.epoch:
                generation.flushed_length = length
                generation.lease = dataclasses.replace(generation.lease, expires_at=expires)
        for generation in generations:
            state = held.get(generation.id)
            if state is None or state.epoch != generation.lease.epoch:
                generation.fence()  # ended by another replica, deleted, or taken over
            elif state.cancel_requested:
                generation.stop(MessageStatus.CANCELLED)
        if batch:
            self._on_changed([f.message_id for f in batch])
        if sweep:
            await self.sweep()

    # ------------------------------------------------------------------------------------------ takeovers

    async def sweep(self, *, mine: bool = False) -> None:
        """Take over the replies whose replica stopped (their lease expired; with `mine`, this replica's own from
        a previous run), to continue them here, or end them INTERRUPTED where they cannot be continued."""
        async with self._uow() as uow:
            expired = await uow.messages.expired(self._clock(), owner=self._replica_id if mine else None)
        for message in expired:
            await self.take_over(message, mine=mine)

    async def take_over(self, message: Message, *, mine: bool = False) -> None:
        """Claim `message` (one compare-and-set on its lease epoch: of racing replicas exactly one wins, and the
        replica that held it is fenced) and continue it from its stored text; or, when the model cannot
        continue, it was continued `max_continuations` times already, or this replica is closing, end it
        INTERRUPTED (if its lease has indeed expired)."""
        if message.id in self._live or message.id in self._claiming:
            return  # generating here already, or being claimed by another of this replica's tasks
        self._claiming.add(message.id)
        try:
            await self._take_over(message, mine=mine)
        finally:
            self._claiming.discard(message.id)

    async def _take_over(self, message: Message, *, mine: bool) -> None:
        now = self._clock()
        if self._closing or not self._producer.continues or len(message.continued_at) >= self._max_continuations:
            await self._abandon(message.id, now, mine=mine)
            return
        assert self._continuation is not None
        async with self._uow() as uow:
            won = await uow.messages.take_over(
                message, Lease(self._replica_id, 0, now + self._lease), now=now, mine=mine
            )
            if won is None:
                return  # not expired after all, or another replica won
            claimed = await uow.messages.get(message.id)
            prompt = await self._continuation(uow, claimed) if claimed is not None else None
            await uow.commit()
        if claimed is None or prompt is None:
            return  # deleted meanwhile
        logger.warning(
            "continuing reply %s after its replica stopped",
            claimed.id,
            extra={"generation": won.epoch, "from_offset": len(claimed.content)},
        )
        self.launch(claimed, prompt, won)
        self._on_changed([claimed.id])

    async def _abandon(self, message_id: str, now: datetime, *, mine: bool = False) -> None:
        """End a reply INTERRUPTED if its lease expired (or, with `mine`, it is this replica's, from a previous
        run): the compare-and-set makes sure only one replica ends it, and not one that is alive."""
        async with self._uow() as uow:
            ended = await uow.messages.mark_abandoned(
                now=now,
                status=MessageStatus.INTERRUPTED.value,
                error_message=RESTARTED_MESSAGE if mine else ABANDONED_MESSAGE,
                message_id=message_id,
                lease_owner=self._replica_id if mine else None,
            )
            await uow.commit()
        if ended:
            logger.warning("marked reply %s INTERRUPTED: its replica stopped", message_id)
            self._on_changed(ended)


class _Refused(Exception):
    """The database refused a write (not an outage): retried with the next, plainer candidate."""


async def _persistently(
    call: Callable[[], Awaitable[T]], what: str, *, initial: float = 0.1, any_error: bool = False
) -> T:
    """`await call()` until it works, retried with exponential backoff up to 5 s and jitter: for writes that must
    happen eventually (the database comes back). `any_error`: not only outages (a flush must never stop for
    good)."""
    errors: tuple[type[BaseException], ...] = (Exception,) if any_error else (Unavailable, _Refused)

    def log(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        level = logging.WARNING if isinstance(error, Unavailable) else logging.ERROR
        logger.log(
            level,
            "%s failed (%s); retrying in %.2fs",
            what,
            type(error).__name__,
            delay,
            exc_info=level > logging.WARNING,
        )

    return await retried(call, errors, initial=initial, ceiling=_MAX_BACKOFF, before_sleep=log)


def _outcome(stored: Message) -> Outcome:
    """What readers get for a stored final state: a FAILED reply is an error for every reader."""
    return Outcome(stored, reply_error(stored) if stored.status is MessageStatus.FAILED else None)


def _fenced(stored: Message) -> Outcome:
    """This replica lost the reply: what is stored (ended, or continued by another replica) is what counts, and
    readers who got text past it are reconciled with it (see `Replies._follow`)."""
    return Outcome(stored, moved=True)


def _deleted(final: Message) -> Outcome:
    """The row is gone (its conversation was deleted while it generated): readers see it CANCELLED."""
    return Outcome(dataclasses.replace(final, status=MessageStatus.CANCELLED, error_message=""))
