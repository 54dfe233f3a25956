"""A coaching session as stored: who, which persona and conversation, its limits, and where it stands."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from service.domain.wrapup import EndReason, Position, Stage


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """0 turns or a zero duration means no limit of that kind."""

    max_turns: int = 0
    max_duration: timedelta = timedelta(0)


@dataclass(frozen=True, slots=True)
class CoachingSession:
    id: str
    owner: str
    conversation_id: str
    persona: str
    limits: SessionLimits
    stage: Stage
    end_reason: EndReason
    turns_used: int
    start_time: datetime
    update_time: datetime

    @property
    def position(self) -> Position:
        return Position(self.stage, self.end_reason)

    def time_left(self, now: datetime) -> timedelta | None:
        """Time until the duration limit (never negative), or None without one. Counted from the session's
        start, across dropped streams."""
        if not self.limits.max_duration:
            return None
        return max(self.limits.max_duration - (now - self.start_time), timedelta(0))

    def limit_reached(self, now: datetime) -> bool:
        turns = self.limits.max_turns
        left = self.time_left(now)
        return bool(turns and self.turns_used >= turns) or (left is not None and left <= timedelta(0))
