"""`CoachingSessionRepository`: the fake, SQLite and Postgres agree."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from service.domain.coaching import CoachingSession
from service.domain.wrapup import EndReason, Stage
from service.ports import UnitOfWork, UnitOfWorkFactory
from tests.contract.conftest import at, coaching_session, conversation, locked_twice, stored

pytestmark = pytest.mark.timeout(30)


async def fetch(uow: UnitOfWorkFactory, session_id: str) -> CoachingSession | None:
    async with uow() as work:
        return await work.coaching_sessions.get(session_id)


async def begun(uow: UnitOfWorkFactory, max_duration: timedelta = timedelta(minutes=15)) -> CoachingSession:
    conv = conversation()
    session = coaching_session(conv, max_duration=max_duration)
    await stored(uow, conv)
    async with uow() as work:
        await work.coaching_sessions.add(session)
        await work.commit()
    return session


@pytest.mark.parametrize("max_duration", [timedelta(0), timedelta(seconds=90.5), timedelta(hours=2)])
async def test_sessions_round_trip(uow: UnitOfWorkFactory, max_duration: timedelta) -> None:
    session = await begun(uow, max_duration=max_duration)

    assert await fetch(uow, session.id) == session
    assert await fetch(uow, coaching_session(conversation()).id) is None


async def test_update_writes_where_the_session_stands(uow: UnitOfWorkFactory) -> None:
    session = await begun(uow)
    ended = dataclasses.replace(
        session, stage=Stage.ENDED, end_reason=EndReason.LIMIT_REACHED, turns_used=6, update_time=at(80)
    )

    async with uow() as work:
        await work.coaching_sessions.update(ended)
        await work.coaching_sessions.update(coaching_session(conversation()))  # unknown: nothing happens
        await work.commit()

    assert await fetch(uow, session.id) == ended


async def test_get_for_update_serialises_turns(uow: UnitOfWorkFactory) -> None:
    session = await begun(uow)

    async def take_a_turn(work: UnitOfWork, current: CoachingSession | None) -> None:
        assert current is not None
        await work.coaching_sessions.update(dataclasses.replace(current, turns_used=current.turns_used + 1))

    await locked_twice(uow, lambda work: work.coaching_sessions.get(session.id, for_update=True), take_a_turn)

    assert (await fetch(uow, session.id)) == dataclasses.replace(session, turns_used=2)
