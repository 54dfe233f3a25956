"""The wrap-up state machine of a coaching session. Pure: no I/O, no clock, no model.

    ACTIVE --learner asks to finish--> CONFIRMING --yes--> WRAPPING_UP --closing words stored--> ENDED
       ^                                   |
       +--------- anything but a yes ------+  (with a normal reply: the coach never asks twice in a row)

    ACTIVE / CONFIRMING --limit reached--> WRAPPING_UP (LIMIT_REACHED, without asking)
    any stage but ENDED --client ends--> WRAPPING_UP (CLIENT_ENDED)

Every event moves the session forward or refuses: WRAPPING_UP only leaves to ENDED, and ENDED refuses all.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from service.domain.intent import asks_to_finish, is_yes


class Stage(enum.StrEnum):
    ACTIVE = "active"
    CONFIRMING = "confirming"
    WRAPPING_UP = "wrapping_up"
    ENDED = "ended"


class EndReason(enum.StrEnum):
    NONE = ""
    USER_REQUESTED = "user_requested"
    LIMIT_REACHED = "limit_reached"
    CLIENT_ENDED = "client_ended"


class Action(enum.Enum):
    REPLY = "reply"  # a normal coaching reply to the learner's turn
    CONFIRM = "confirm"  # ask whether the learner wants to finish
    WRAP_UP = "wrap_up"  # closing words + a short summary with feedback
    END = "end"  # the closing words are stored: report the session ended
    REFUSE = "refuse"  # the event does not apply in this stage (a turn after the end)


@dataclass(frozen=True, slots=True)
class Turn:
    """The learner said something. `finishing` is a verdict from elsewhere (the model) on whether it asks to
    finish; None leaves it to the text rules."""

    text: str
    finishing: bool | None = None


@dataclass(frozen=True, slots=True)
class LimitReached:
    """The session used its turns or its time."""


@dataclass(frozen=True, slots=True)
class ClientEnded:
    """The client sent `end{}`."""


@dataclass(frozen=True, slots=True)
class WrappedUp:
    """The closing words and summary are stored."""


Event = Turn | LimitReached | ClientEnded | WrappedUp


@dataclass(frozen=True, slots=True)
class Position:
    """Where a session is in the wrap-up: its stage, and why it is ending once it is."""

    stage: Stage = Stage.ACTIVE
    reason: EndReason = EndReason.NONE


@dataclass(frozen=True, slots=True)
class Step:
    position: Position
    action: Action


def advance(position: Position, event: Event) -> Step:
    """The next position and what the coach does about `event`."""
    stage = position.stage
    if stage is Stage.ENDED:
        return Step(position, Action.REFUSE)
    if stage is Stage.WRAPPING_UP:
        if isinstance(event, WrappedUp):
            return Step(Position(Stage.ENDED, position.reason), Action.END)
        return Step(position, Action.WRAP_UP if isinstance(event, ClientEnded) else Action.REFUSE)
    if isinstance(event, ClientEnded):
        return _wrap_up(EndReason.CLIENT_ENDED)
    if isinstance(event, LimitReached):
        return _wrap_up(EndReason.LIMIT_REACHED)
    if isinstance(event, WrappedUp):  # nothing was being wrapped up
        return Step(position, Action.REFUSE)
    if stage is Stage.CONFIRMING:
        if is_yes(event.text):
            return _wrap_up(EndReason.USER_REQUESTED)
        return Step(Position(Stage.ACTIVE), Action.REPLY)
    finishing = asks_to_finish(event.text) if event.finishing is None else event.finishing
    if finishing:
        return Step(Position(Stage.CONFIRMING), Action.CONFIRM)
    return Step(position, Action.REPLY)


def _wrap_up(reason: EndReason) -> Step:
    return Step(Position(Stage.WRAPPING_UP, reason), Action.WRAP_UP)
