"""The Coach use case against in-memory storage, a scripted model and a clock that moves only when told."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from service.coaching.classifier import QUESTION
from service.coaching.coach import Coaching
from service.coaching.events import (
    CoachEvent,
    Command,
    End,
    SessionEnded,
    SessionStarted,
    Start,
    TurnCompleted,
    UserTurn,
    WrapUpConfirmation,
)
from service.coaching.session_records import SessionRecords
from service.coaching.steps import CONFIRMATION
from service.domain import (
    Completion,
    FailedPrecondition,
    MessageStatus,
    ModelUnavailable,
    NotFound,
    Principal,
    Prompt,
    Role,
)
from service.domain.wrapup import EndReason, Position, Stage
from service.replies import Delta, Replies
from service.wiring import UseCases
from tests.fakes import FakeClock, FakeStorage, ScriptedProvider
from tests.wired import Wire

ALICE = Principal("alice")
WAIT = 5.0


class Learner:
    """A client's side of one stream: commands go in when the test says, events come out in order."""

    def __init__(self, coaching: Coaching, principal: Principal = ALICE) -> None:
        self._queue: asyncio.Queue[Command | None] = asyncio.Queue()
        self.events = coaching.coach(principal, self._commands())

    async def _commands(self) -> AsyncIterator[Command]:
        while (command := await self._queue.get()) is not None:
            yield command

    def send(self, command: Command) -> None:
        self._queue.put_nowait(command)

    def close(self) -> None:
        self._queue.put_nowait(None)

    async def next(self) -> CoachEvent:
        async with asyncio.timeout(WAIT):
            return await anext(self.events)

    async def until(self, kind: type[CoachEvent]) -> tuple[str, CoachEvent]:
        """The text of the deltas, then the first event of `kind` (any other event fails the test)."""
        text = ""
        while True:
            event = await self.next()
            if isinstance(event, Delta):
                text += event.text
                continue
            assert isinstance(event, kind), f"expected {kind.__name__}, got {event}"
            return text, event

    async def finished(self) -> None:
        with pytest.raises(StopAsyncIteration):
            await self.next()


@pytest.fixture
def provider() -> ScriptedProvider:
    return ScriptedProvider(["Nice", " to meet you."])


@pytest.fixture
async def use_cases(wired: Wire, provider: ScriptedProvider) -> AsyncIterator[UseCases]:
    built = wired(provider, max_message_bytes=1024)
    await built.replies.start()
    yield built
    await built.replies.close(grace=1.0)


@pytest.fixture
def replies(use_cases: UseCases) -> Replies:
    return use_cases.replies


class Judge(ScriptedProvider):
    """Answers the finish classifier with `verdict` (or fails), and everything else with the script."""

    def __init__(self, verdict: str | Exception) -> None:
        super().__init__(["Nice", " to meet you."])
        self.verdict = verdict
        self.questions: list[str] = []

    async def stream(self, prompt: Prompt) -> AsyncIterator[str | Completion]:
        if prompt.turns[0].content != QUESTION:
            async for item in super().stream(prompt):
                yield item
            return
        self.questions.append(prompt.turns[-1].content)
        if isinstance(self.verdict, Exception):
            raise self.verdict
        yield self.verdict
        yield Completion()


@pytest.fixture
def store(use_cases: UseCases) -> SessionRecords:
    return use_cases.session_records


@pytest.fixture
def coaching(use_cases: UseCases) -> Coaching:
    return use_cases.coaching


async def begin(learner: Learner, **fields: object) -> SessionStarted:
    learner.send(Start(**fields))  # type: ignore[arg-type]
    _, started = await learner.until(SessionStarted)
    assert isinstance(started, SessionStarted)
    return started


async def test_a_yes_after_the_question_ends_the_session_with_model_closing_words(
    coaching: Coaching, storage: FakeStorage, provider: ScriptedProvider
) -> None:
    learner = Learner(coaching)
    session = (await begin(learner, persona="english_buddy")).session

    learner.send(UserTurn("Hello!"))
    text, completed = await learner.until(TurnCompleted)
    assert isinstance(completed, TurnCompleted)
    assert text == completed.message.content == provider.text
    learner.send(UserTurn("i have to go"))
    _, asked = await learner.until(WrapUpConfirmation)
    assert isinstance(asked, WrapUpConfirmation)
    assert asked.prompt == CONFIRMATION
    assert storage.state.coaching_sessions[session.id].stage is Stage.CONFIRMING
    learner.send(UserTurn("Yes."))
    closing, ended = await learner.until(SessionEnded)
    await learner.finished()

    assert isinstance(ended, SessionEnded)
    assert ended.reason is EndReason.USER_REQUESTED
    assert ended.summary == closing == provider.text
    assert provider.calls == 2  # the reply and the closing words; the question is not the model's
    steer = provider.prompts[-1].turns[-1]
    assert steer.role is Role.SYSTEM and "the learner asked to finish" in steer.content
    stored = storage.state.coaching_sessions[session.id]
    assert (stored.stage, stored.end_reason, stored.turns_used) == (Stage.ENDED, EndReason.USER_REQUESTED, 1)
    contents = [m.content for m in storage.messages_in(session.conversation_id)]
    assert contents == ["Hello!", provider.text, "i have to go", CONFIRMATION, "Yes.", provider.text]


async def test_elapsed_time_counts_from_the_start_across_rejoins(coaching: Coaching, clock: FakeClock) -> None:
    learner = Learner(coaching)
    started = await begin(learner, persona="english_buddy", max_duration=timedelta(minutes=10))
    assert started.time_left == timedelta(minutes=10)
    learner.close()
    await learner.finished()

    clock.advance(240)
    again = Learner(coaching)
    rejoined = await begin(again, session_id=started.session.id)
    assert rejoined.rejoined
    assert rejoined.time_left == timedelta(minutes=6)

    again.send(UserTurn("Hi"))
    _, completed = await again.until(TurnCompleted)
    assert isinstance(completed, TurnCompleted)
    assert completed.time_left == timedelta(minutes=6)

    clock.advance(360)
    again.send(UserTurn("And another thing"))
    _, ended = await again.until(SessionEnded)
    assert isinstance(ended, SessionEnded)
    assert ended.reason is EndReason.LIMIT_REACHED
    assert ended.session.turns_used == 1  # the late turn was not answered: the time was up


async def test_rejoining_when_the_time_is_up_ends_at_once(coaching: Coaching, clock: FakeClock) -> None:
    learner = Learner(coaching)
    started = await begin(learner, persona="english_buddy", max_duration=timedelta(minutes=1))
    learner.close()
    await learner.finished()
    clock.advance(61)

    again = Learner(coaching)
    rejoined = await begin(again, session_id=started.session.id)
    _, ended = await again.until(SessionEnded)

    assert rejoined.time_left == timedelta(0)
    assert isinstance(ended, SessionEnded)
    assert ended.reason is EndReason.LIMIT_REACHED


async def test_a_rejoin_mid_wrap_up_follows_the_closing_reply_instead_of_writing_another(
    coaching: Coaching, provider: ScriptedProvider, storage: FakeStorage
) -> None:
    learner = Learner(coaching)
    session = (await begin(learner, persona="english_buddy")).session
    provider.pause_after = 1  # the closing reply stops after its first piece until released
    learner.send(End())
    first = await learner.next()
    assert isinstance(first, Delta)
    await learner.events.aclose()  # the stream drops mid-wrap-up
    assert storage.state.coaching_sessions[session.id].stage is Stage.WRAPPING_UP

    again = Learner(coaching)
    rejoined = await begin(again, session_id=session.id)
    assert rejoined.session.stage is Stage.WRAPPING_UP
    provider.release.set()
    closing, ended = await again.until(SessionEnded)

    assert isinstance(ended, SessionEnded)
    assert ended.reason is EndReason.CLIENT_ENDED
    assert closing == ended.summary == provider.text
    assert provider.calls == 1
    closing_messages = [m for m in storage.messages_in(session.conversation_id) if m.role is Role.ASSISTANT]
    assert [m.status for m in closing_messages] == [MessageStatus.COMPLETED]


async def test_a_confirmation_is_not_a_turn_and_a_no_is(coaching: Coaching) -> None:
    learner = Learner(coaching)
    await begin(learner, persona="english_buddy", max_turns=2)
    learner.send(UserTurn("Let's stop here"))
    await learner.until(WrapUpConfirmation)
    learner.send(UserTurn("no"))
    _, first = await learner.until(TurnCompleted)
    learner.send(UserTurn("Let's stop here"))
    await learner.until(WrapUpConfirmation)
    learner.send(UserTurn("hmm, no"))
    _, second = await learner.until(TurnCompleted)
    _, ended = await learner.until(SessionEnded)

    assert isinstance(first, TurnCompleted) and first.turns_used == 1
    assert isinstance(second, TurnCompleted) and second.turns_used == 2
    assert isinstance(ended, SessionEnded) and ended.reason is EndReason.LIMIT_REACHED


async def test_a_deleted_conversation_ends_its_session(coaching: Coaching, storage: FakeStorage) -> None:
    learner = Learner(coaching)
    session = (await begin(learner, persona="english_buddy")).session
    learner.close()
    await learner.finished()
    async with storage.unit_of_work() as uow:
        await uow.conversations.delete(session.conversation_id)
        await uow.commit()

    again = Learner(coaching)
    again.send(Start(session_id=session.id))
    with pytest.raises(NotFound):
        await again.next()


async def test_an_ended_session_cannot_be_rejoined(coaching: Coaching) -> None:
    learner = Learner(coaching)
    session = (await begin(learner, persona="english_buddy")).session
    learner.send(End())
    await learner.until(SessionEnded)

    again = Learner(coaching)
    again.send(Start(session_id=session.id))
    with pytest.raises(FailedPrecondition, match="ended"):
        await again.next()


def test_personas_are_listed_by_page(coaching: Coaching) -> None:
    first = coaching.personas(1, "")
    second = coaching.personas(1, first.next_page_token)

    assert [p.name for p in first.items] == ["english_buddy"]
    assert [p.name for p in second.items] == ["interview_coach"]


@pytest.mark.parametrize(
    ("verdict", "expected"),
    [("Yes.", WrapUpConfirmation), ("no", TurnCompleted), (ModelUnavailable("down"), TurnCompleted)],
)
async def test_the_model_decides_ambiguous_turns(
    wired: Wire, verdict: str | Exception, expected: type[CoachEvent]
) -> None:
    judge = Judge(verdict)
    coaching = wired(judge, max_message_bytes=1024).coaching
    learner = Learner(coaching)
    await begin(learner, persona="english_buddy")

    learner.send(UserTurn("How do I say hello?"))  # clear: no question for the model
    await learner.until(TurnCompleted)
    learner.send(UserTurn("I think I'll head off soon"))
    _, event = await learner.until(expected)

    assert judge.questions == ["I think I'll head off soon"]
    assert isinstance(event, expected)


# ---------------------------------------------------------------------------------------------- compare-and-set


async def test_a_claim_stores_only_what_was_decided_on_the_stored_session(
    coaching: Coaching, store: SessionRecords
) -> None:
    session = (await begin(Learner(coaching), persona="english_buddy")).session
    confirming = await store.claim(session, Position(Stage.CONFIRMING))
    assert confirming is not None and confirming.stage is Stage.CONFIRMING

    # Another stream decided on the ACTIVE session it read before: its decision is not stored.
    assert await store.claim(session, Position(Stage.CONFIRMING)) is None
    assert await store.claim(session, Position(), turns=1) is None
    assert (await store.load(ALICE, session.id)).position == Position(Stage.CONFIRMING)

    answered = await store.claim(confirming, Position(), turns=1)
    assert answered is not None and (answered.stage, answered.turns_used) == (Stage.ACTIVE, 1)
    assert await store.claim(confirming, Position(Stage.WRAPPING_UP, EndReason.USER_REQUESTED)) is None


async def test_a_claim_that_changes_nothing_writes_nothing(coaching: Coaching, store: SessionRecords) -> None:
    session = (await begin(Learner(coaching), persona="english_buddy")).session
    wrapping = await store.claim(session, Position(Stage.WRAPPING_UP, EndReason.CLIENT_ENDED))
    assert wrapping is not None

    joined = await store.claim(wrapping, wrapping.position)

    assert joined == wrapping  # the same update_time: not written again
