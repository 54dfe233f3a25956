"""One step of a coaching session, safe when several streams use the session at once.

Several streams may use one session (a rejoin while the old stream lingers, two devices, two replicas).
A step is decided by the pure state machine on the session as stored, and stored by compare-and-set
(`SessionRecords.claim`): a decision made on a session another stream moved since is made again on what
that stream left. So the stored stages only ever follow the state machine, whatever the interleaving:
never backwards, ENDED final, never two questions in a row.

The step's action (the reply, the question, the closing words) begins right after its claim, once no other
reply is generating in the conversation (which takes one at a time), and under a per-session lock on this
replica, so the messages of a session's steps follow the order of its stages. Across replicas the claims
alone keep the stages legal (two racing steps' messages may then interleave).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from tenacity import RetryCallState

from service.coaching.classifier import FinishClassifier
from service.coaching.session_records import SessionRecords
from service.domain import FailedPrecondition, Message, Principal
from service.domain.coaching import CoachingSession
from service.domain.intent import might_ask_to_finish
from service.domain.wrapup import (
    Action,
    ClientEnded,
    EndReason,
    Event,
    LimitReached,
    Stage,
    Step,
    Turn,
    WrappedUp,
    advance,
)
from service.replies import Replies, ReplyEvent, Started
from service.retrying import retrying

T = TypeVar("T")

CLAIM_ATTEMPTS = 8  # decisions in a row lost to other streams before the step is refused
START_ATTEMPTS = 3  # replies begun in the conversation by others while this step waited to begin its own
CLOSING = (Stage.WRAPPING_UP, Stage.ENDED)

CONFIRMATION = (
    "It sounds like you would like to finish. Shall we wrap up the session now? "
    "Say yes to end it, or anything else to keep going."
)
_WHY = {
    EndReason.USER_REQUESTED: "the learner asked to finish",
    EndReason.LIMIT_REACHED: "the session has reached its time or turn limit",
    EndReason.CLIENT_ENDED: "the learner ended the session",
}


def closing_instructions(reason: EndReason) -> str:
    """What the model is told, for this reply only, when the session ends."""
    return (
        f"The coaching session is ending now: {_WHY[reason]}. Reply with warm closing words in one or two "
        "sentences, then a short summary of what the learner practised, with one or two concrete pieces of "
        "feedback to keep improving. Do not ask a question."
    )


def closing_request_id(session: CoachingSession) -> str:
    """The closing reply's request id is the session's own: every stream following the wrap-up (a rejoin
    after a drop, another stream) attaches to the one reply instead of writing a second."""
    return f"coaching-closing-{session.id}"


@dataclass(frozen=True, slots=True)
class Begun:
    """A step stored and its action begun: the question asked, or the reply (or closing words) under way."""

    step: Step
    session: CoachingSession  # as the step stored it
    question: Message | None = None
    started: Started | None = None
    events: AsyncIterator[ReplyEvent] | None = None  # the rest of the reply, after `started`


class Steps:
    def __init__(
        self,
        store: SessionRecords,
        replies: Replies,
        *,
        clock: Callable[[], datetime],
        classifier: FinishClassifier | None = None,
    ) -> None:
        self._store = store
        self._replies = replies
        self._clock = clock
        self._classifier = classifier
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    async def begin(self, principal: Principal, session: CoachingSession, event: Event | None) -> Begun:
        """Take `event` (None: follow the wrap-up under way) on the stored session and begin its action."""
        if isinstance(event, Turn):  # a model call: made before the lock, not to hold up other streams
            event = await self._judged(session, event)
        async with self._lock(session.id):
            await self._await_idle(principal, session)
            step, session, said = await self._claim(principal, session, event)
            if step.action is Action.CONFIRM:
                assert isinstance(event, Turn)
                text = event.text
                _, question = await self._when_idle(
                    principal,
                    session,
                    lambda: self._replies.record(principal, session.conversation_id, text, CONFIRMATION),
                )
                return Begun(step, session, question=question)
            reply = self._replying(principal, session, event) if step.action is Action.REPLY else None
            started, events = await self._when_idle(
                principal, session, lambda: _started(reply() if reply else self._closing(principal, session, said))
            )
            return Begun(step, session, started=started, events=events)

    async def finish(self, principal: Principal, session: CoachingSession) -> CoachingSession:
        """WRAPPING_UP -> ENDED once the closing words are stored (by this stream, or by another one that
        followed the same closing reply and got there first)."""
        for _ in range(CLAIM_ATTEMPTS):
            seen = await self._store.load(principal, session.id)
            if seen.stage is Stage.ENDED:
                return seen
            ended = await self._store.claim(seen, advance(seen.position, WrappedUp()).position)
            if ended is not None:
                return ended
        raise _contended()

    async def _claim(
        self, principal: Principal, session: CoachingSession, event: Event | None
    ) -> tuple[Step, CoachingSession, str | None]:
        """Decide on the stored session, and store the decision only if no other stream moved the session
        since it was read; otherwise decide again on what that stream left. Returns the step, the session
        as stored, and the learner's words when they are what starts the wrap-up."""
        for _ in range(CLAIM_ATTEMPTS):
            seen = await self._store.load(principal, session.id)
            if seen.stage in CLOSING and not isinstance(event, Turn | ClientEnded):
                # Time ran out, or the stream follows a wrap-up: whoever started it, the session is closing.
                return Step(seen.position, Action.WRAP_UP), seen, None
            decided = event
            if isinstance(event, Turn):
                decided = event = await self._judged(seen, event)
                if seen.limit_reached(self._clock()):
                    decided = LimitReached()
            assert decided is not None
            step = advance(seen.position, decided)
            if step.action is Action.REFUSE:
                raise FailedPrecondition(
                    f"the coaching session is {seen.stage.value.replace('_', ' ')}; it takes no more turns",
                    metadata={"stage": seen.stage.value},
                )
            claimed = await self._store.claim(seen, step.position, turns=int(step.action is Action.REPLY))
            if claimed is not None:
                said = decided.text if isinstance(decided, Turn) and step.action is Action.WRAP_UP else None
                return step, claimed, said
        raise _contended()

    async def _judged(self, session: CoachingSession, turn: Turn) -> Turn:
        """The turn, with the model's verdict when the text rules cannot tell whether it asks to finish (only
        an active session asks; a verdict once given is kept)."""
        if turn.finishing is not None or self._classifier is None or not might_ask_to_finish(turn.text):
            return turn
        if session.stage is not Stage.ACTIVE or session.limit_reached(self._clock()):
            return turn
        model = await self._store.model_of(session)
        return Turn(turn.text, await self._classifier.asks_to_finish(turn.text, model))

    def _lock(self, session_id: str) -> asyncio.Lock:
        lock = self._locks.get(session_id)  # kept while a step holds or awaits it
        if lock is None:
            lock = self._locks[session_id] = asyncio.Lock()
        return lock

    async def _await_idle(self, principal: Principal, session: CoachingSession) -> None:
        """Wait until no other reply is generating in the session's conversation. The session's own closing
        reply is not waited for: a step follows it (attaches to it) instead."""
        in_flight = await self._store.reply_in_flight(session)
        if in_flight is None or in_flight.request_id == closing_request_id(session):
            return
        async for _ in self._replies.resume(principal, in_flight.id, 0):
            pass

    async def _when_idle(self, principal: Principal, session: CoachingSession, begin: Callable[[], Awaitable[T]]) -> T:
        """`begin()`; when it is refused (a reply started in the conversation meanwhile, on another replica or
        not from a coaching stream: that reply may already be over), again once the conversation is idle."""

        async def idle(_: RetryCallState) -> None:
            await self._await_idle(principal, session)

        async for attempt in retrying(FailedPrecondition, attempts=START_ATTEMPTS, before_sleep=idle):
            with attempt:
                return await begin()
        raise AssertionError("unreachable: tenacity re-raises the last error")

    def _replying(
        self, principal: Principal, session: CoachingSession, event: Event | None
    ) -> Callable[[], AsyncIterator[ReplyEvent]]:
        assert isinstance(event, Turn)
        text = event.text
        return lambda: self._replies.stream(principal, session.conversation_id, text, "")

    def _closing(self, principal: Principal, session: CoachingSession, said: str | None) -> AsyncIterator[ReplyEvent]:
        steer = closing_instructions(session.end_reason)
        request_id = closing_request_id(session)
        if said is None:
            return self._replies.stream_unprompted(principal, session.conversation_id, steer, request_id)
        return self._replies.stream(principal, session.conversation_id, said, request_id, steer=steer)


async def _started(events: AsyncIterator[ReplyEvent]) -> tuple[Started, AsyncIterator[ReplyEvent]]:
    """The reply's first event (it is stored and generating: later steps see it), and the rest to follow."""
    first = await anext(events)
    assert isinstance(first, Started)
    return first, events


def _contended() -> FailedPrecondition:
    return FailedPrecondition(
        "the coaching session is being changed by other streams; try again", metadata={"stage": "contended"}
    )
