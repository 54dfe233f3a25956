"""What flows over a coaching stream, as domain values: the client's commands and the coach's events."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from service.domain import Message
from service.domain.coaching import CoachingSession
from service.domain.wrapup import EndReason
from service.ports import Audio
from service.replies import Delta

# ---------------------------------------------------------------------------------------------- commands


@dataclass(frozen=True, slots=True)
class Start:
    persona: str = ""
    conversation_id: str = ""
    session_id: str = ""  # rejoin
    max_turns: int = 0
    max_duration: timedelta = timedelta(0)
    speak: bool = False


@dataclass(frozen=True, slots=True)
class UserTurn:
    text: str = ""
    audio: Audio | None = None


@dataclass(frozen=True, slots=True)
class End:
    pass


Command = Start | UserTurn | End

# ---------------------------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class SessionStarted:
    session: CoachingSession
    rejoined: bool
    time_left: timedelta | None


@dataclass(frozen=True, slots=True)
class TurnCompleted:
    message: Message
    user_message: Message | None
    turns_used: int
    time_left: timedelta | None
    audio: Audio | None = None


@dataclass(frozen=True, slots=True)
class WrapUpConfirmation:
    prompt: str
    message: Message


@dataclass(frozen=True, slots=True)
class SessionEnded:
    reason: EndReason
    summary: str
    message: Message
    session: CoachingSession
    audio: Audio | None = None


CoachEvent = SessionStarted | Delta | TurnCompleted | WrapUpConfirmation | SessionEnded
