"""The wrap-up state machine: every path, and properties over random sessions (hypothesis)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.domain.wrapup import (
    Action,
    ClientEnded,
    EndReason,
    Event,
    LimitReached,
    Position,
    Stage,
    Step,
    Turn,
    WrappedUp,
    advance,
)

ACTIVE = Position()
CONFIRMING = Position(Stage.CONFIRMING)

FINISH = ["I have to go", "let's stop here", "CAN WE WRAP UP?", "i hvae to go", "lets stpo here", "Bye!"]
YES = ["yes", "Yes please", "yeah", "sure", "OK", "yse", "yes, I have to go"]
NOT_YES = ["no", "not yet", "wait, one more question", "what is a phrasal verb?", "", "nope, let's go on"]
OTHER = ["How do I order coffee?", "I goed to the shop yesterday", "Tell me about interviews"]


@pytest.mark.parametrize("text", FINISH)
def test_asking_to_finish_asks_for_confirmation(text: str) -> None:
    assert advance(ACTIVE, Turn(text)) == _step(CONFIRMING, Action.CONFIRM)


@pytest.mark.parametrize("text", OTHER)
def test_other_turns_get_a_reply(text: str) -> None:
    assert advance(ACTIVE, Turn(text)) == _step(ACTIVE, Action.REPLY)


@pytest.mark.parametrize("text", YES)
def test_yes_wraps_up_as_user_requested(text: str) -> None:
    step = advance(CONFIRMING, Turn(text))

    assert step == _step(Position(Stage.WRAPPING_UP, EndReason.USER_REQUESTED), Action.WRAP_UP)
    assert advance(step.position, WrappedUp()) == _step(Position(Stage.ENDED, EndReason.USER_REQUESTED), Action.END)


@pytest.mark.parametrize("text", [*NOT_YES, "I really don't have to go"])
def test_anything_but_yes_goes_back_to_active_with_a_reply(text: str) -> None:
    assert advance(CONFIRMING, Turn(text)) == _step(ACTIVE, Action.REPLY)


@pytest.mark.parametrize("position", [ACTIVE, CONFIRMING])
def test_a_limit_wraps_up_without_asking(position: Position) -> None:
    assert advance(position, LimitReached()) == _step(
        Position(Stage.WRAPPING_UP, EndReason.LIMIT_REACHED), Action.WRAP_UP
    )


@pytest.mark.parametrize("position", [ACTIVE, CONFIRMING])
def test_client_end_wraps_up_at_once(position: Position) -> None:
    assert advance(position, ClientEnded()) == _step(
        Position(Stage.WRAPPING_UP, EndReason.CLIENT_ENDED), Action.WRAP_UP
    )


def test_wrapping_up_keeps_its_reason_and_refuses_turns() -> None:
    wrapping = Position(Stage.WRAPPING_UP, EndReason.LIMIT_REACHED)

    assert advance(wrapping, Turn("hello")) == _step(wrapping, Action.REFUSE)
    assert advance(wrapping, LimitReached()) == _step(wrapping, Action.REFUSE)
    assert advance(wrapping, ClientEnded()) == _step(wrapping, Action.WRAP_UP)


@pytest.mark.parametrize("event", [Turn("yes"), Turn("hello"), LimitReached(), ClientEnded(), WrappedUp()])
def test_an_ended_session_refuses_everything(event: Event) -> None:
    ended = Position(Stage.ENDED, EndReason.CLIENT_ENDED)

    assert advance(ended, event) == _step(ended, Action.REFUSE)


def test_a_verdict_from_the_model_overrides_the_text_rules() -> None:
    assert advance(ACTIVE, Turn("I think I'll head off", finishing=True)) == _step(CONFIRMING, Action.CONFIRM)
    assert advance(ACTIVE, Turn("I have to go", finishing=False)) == _step(ACTIVE, Action.REPLY)


def test_wrapped_up_without_a_wrap_up_is_refused() -> None:
    assert advance(ACTIVE, WrappedUp()) == _step(ACTIVE, Action.REFUSE)


# ---------------------------------------------------------------------------------------------- properties

texts = st.one_of(
    st.sampled_from(FINISH + YES + NOT_YES + OTHER),
    st.text(max_size=40),
)
events = st.one_of(
    texts.map(Turn),
    st.builds(Turn, texts, st.booleans()),
    st.just(LimitReached()),
    st.just(ClientEnded()),
)


def run(script: list[Event]) -> list[Action]:
    """Drive the machine as the session use case does: a WRAP_UP is followed by the stored closing words."""
    position, actions = ACTIVE, []
    for event in [*script, ClientEnded()]:  # every session ends: the stream closes at the latest
        step = advance(position, event)
        position = step.position
        actions.append(step.action)
        if step.action is Action.WRAP_UP:
            step = advance(position, WrappedUp())
            position = step.position
            actions.append(step.action)
    assert position.stage is Stage.ENDED
    return actions


@settings(max_examples=400, deadline=None)
@given(st.lists(events, max_size=30))
def test_every_session_ends_exactly_once(script: list[Event]) -> None:
    actions = run(script)

    assert actions.count(Action.END) == 1
    after_end = actions[actions.index(Action.END) + 1 :]
    assert set(after_end) <= {Action.REFUSE}


@settings(max_examples=400, deadline=None)
@given(st.lists(events, max_size=30))
def test_never_asks_for_confirmation_twice_in_a_row(script: list[Event]) -> None:
    actions = run(script)

    assert all(not (a is Action.CONFIRM and b is Action.CONFIRM) for a, b in itertools.pairwise(actions))


@settings(max_examples=400, deadline=None)
@given(st.lists(texts, max_size=30))
def test_turns_alone_never_end_a_session_without_a_yes_after_a_question(replies: list[str]) -> None:
    position = ACTIVE
    for text in replies:
        before = position
        step = advance(position, Turn(text))
        position = step.position
        if step.action is Action.WRAP_UP:
            assert before.stage is Stage.CONFIRMING
            assert position.reason is EndReason.USER_REQUESTED
            return


@settings(max_examples=200, deadline=None)
@given(st.lists(events, max_size=30))
def test_a_limit_or_an_end_ends_the_session_within_one_wrap_up(script: list[Event]) -> None:
    position = ACTIVE
    for event in script:
        step = advance(position, event)
        position = step.position
        if step.action is Action.WRAP_UP:
            assert isinstance(event, (Turn, LimitReached, ClientEnded))
            assert advance(position, WrappedUp()).position.stage is Stage.ENDED
            return


def _step(position: Position, action: Action) -> Step:
    return Step(position, action)
