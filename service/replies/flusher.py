"""Batched persistence of replies in flight: one transaction per tick for every reply this replica generates.

Each tick writes the partial text of replies that grew (never per token), renews their leases, and reads back
which of them another replica asked to cancel or took away (deleted conversation, lease judged expired).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

from service.domain import MessageStatus, Unavailable
from service.ports import Flush, UnitOfWorkFactory
from service.replies.generation import Generation

logger = logging.getLogger(__name__)

ABANDONED_MESSAGE = "the replica generating this reply stopped responding"


class Flusher:
    def __init__(
        self,
        live: Mapping[str, Generation],
        uow: UnitOfWorkFactory,
        *,
        replica_id: str,
        interval: float,
        lease: float,
        clock: Callable[[], datetime],
        on_flushed: Callable[[list[str]], None] = lambda ids: None,
    ) -> None:
        self._live = live
        self._uow = uow
        self._replica_id = replica_id
        self._interval = interval
        self._lease = timedelta(seconds=lease)
        self._clock = clock
        self._on_flushed = on_flushed
        self._sweep_every = max(1, round(lease / 2 / interval))
        self.writes = 0  # rows written, for the benchmarks
        self.commits = 0

    async def run(self) -> None:
        """Tick until cancelled; a failing database slows the ticks down (exponential backoff) but never
        stops them, and nothing is lost: unflushed text stays in the buffers."""
        ticks, backoff = 0, self._interval
        while True:
            await asyncio.sleep(backoff)
            ticks += 1
            try:
                await self.tick(sweep=ticks % self._sweep_every == 0)
            except Unavailable:
                backoff = min(backoff * 2, 5.0)
                logger.warning("flush failed; retrying in %.2fs", backoff)
            except Exception:
                logger.exception("flush failed unexpectedly")
                backoff = min(backoff * 2, 5.0)
            else:
                backoff = self._interval

    async def tick(self, *, sweep: bool = False) -> None:
        now = self._clock()
        renew_before = now + self._lease / 2
        expires = now + self._lease
        generations = [g for g in self._live.values() if g.buffer.outcome is None]
        due = [g for g in generations if g.buffer.length != g.flushed_length or g.lease_expires_at <= renew_before]
        lengths = [g.buffer.length for g in due]
        batch = [Flush(g.id, g.buffer.text, self._replica_id, expires, now) for g in due]
        async with self._uow() as uow:
            if batch:
                await uow.messages.flush(batch)
            owned = await uow.messages.owned_streaming(self._replica_id) if generations else {}
            abandoned = (
                await uow.messages.mark_abandoned(
                    now=now, status=MessageStatus.INTERRUPTED.value, error_message=ABANDONED_MESSAGE
                )
                if sweep
                else []
            )
            await uow.commit()
        self.commits += 1
        self.writes += len(batch)
        for generation, length in zip(due, lengths, strict=True):
            generation.flushed_length = length
            generation.lease_expires_at = expires
        for generation in generations:
            cancel = owned.get(generation.id)
            if cancel is None:
                # Our row is gone or no longer ours (conversation deleted, lease taken): stop generating.
                generation.stop(MessageStatus.CANCELLED)
            elif cancel:
                generation.stop(MessageStatus.CANCELLED)
        if abandoned:
            logger.warning("marked %d abandoned replies INTERRUPTED", len(abandoned))
        if batch or abandoned:
            self._on_flushed([f.message_id for f in batch] + list(abandoned))
