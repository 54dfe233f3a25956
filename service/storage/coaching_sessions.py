"""The coaching-session repository: Core statements in, `CoachingSession` dataclasses out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from service.domain.coaching import CoachingSession, SessionLimits
from service.domain.wrapup import EndReason, Stage
from service.storage.tables import coaching_sessions


class SqlCoachingSessions:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def add(self, session: CoachingSession) -> None:
        await self._conn.execute(coaching_sessions.insert().values(id=session.id, **_row(session)))

    async def get(self, session_id: str, *, for_update: bool = False) -> CoachingSession | None:
        query = coaching_sessions.select().where(coaching_sessions.c.id == session_id)
        if for_update:
            query = query.with_for_update()
        row = (await self._conn.execute(query)).first()
        return _session(row) if row else None

    async def update(self, session: CoachingSession) -> None:
        statement = coaching_sessions.update().where(coaching_sessions.c.id == session.id).values(**_row(session))
        await self._conn.execute(statement)


def _row(s: CoachingSession) -> dict[str, Any]:
    return {
        "owner": s.owner,
        "conversation_id": s.conversation_id,
        "persona": s.persona,
        "stage": s.stage.value,
        "end_reason": s.end_reason.value,
        "turns_used": s.turns_used,
        "max_turns": s.limits.max_turns,
        "max_duration_seconds": s.limits.max_duration.total_seconds(),
        "start_time": s.start_time,
        "update_time": s.update_time,
    }


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _session(row: Any) -> CoachingSession:
    return CoachingSession(
        id=row.id,
        owner=row.owner,
        conversation_id=row.conversation_id,
        persona=row.persona,
        limits=SessionLimits(row.max_turns, timedelta(seconds=row.max_duration_seconds)),
        stage=Stage(row.stage),
        end_reason=EndReason(row.end_reason),
        turns_used=row.turns_used,
        start_time=_utc(row.start_time),
        update_time=_utc(row.update_time),
    )
