"""The storage contract suites run every test on each implementation of the ports: the in-memory fake the unit
tests use (tests/fakes.py), SQLite and Postgres. What the SQL repositories do is the contract; the fake must
agree, or the unit tests prove things about a world that does not exist."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest

from service.domain import Conversation, Lease, Message, MessageStatus, Role, new_id
from service.domain.coaching import CoachingSession, SessionLimits
from service.domain.wrapup import EndReason, Stage
from service.ports import RowsPage, UnitOfWork, UnitOfWorkFactory
from service.storage.database import Database
from tests.conftest import empty_database
from tests.fakes import FakeStorage

T = TypeVar("T")
LOCK_GRACE_SECONDS = 0.3
T0 = datetime(2025, 3, 1, 9, 30, 15, 123456, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture(params=["fake", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def uow(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[UnitOfWorkFactory]:
    """A unit-of-work factory over empty storage, once per implementation."""
    if request.param == "fake":
        yield FakeStorage().unit_of_work
        return
    database = Database(await empty_database(request, request.param, tmp_path))
    try:
        yield database.unit_of_work
    finally:
        await database.dispose()


def conversation(owner: str = "alice", *, when: datetime = T0, title: str = "A title") -> Conversation:
    return Conversation(
        id=new_id(),
        owner=owner,
        title=title,
        model="llama3.2",
        persona="coach",
        system_prompt="Be brief.",
        create_time=when,
        update_time=when,
    )


def message(
    conv: Conversation,
    content: str = "hello",
    *,
    role: Role = Role.USER,
    status: MessageStatus = MessageStatus.COMPLETED,
    request_id: str = "",
    when: datetime = T0,
    owner: str | None = None,
) -> Message:
    return Message(
        id=new_id(),
        conversation_id=conv.id,
        owner=conv.owner if owner is None else owner,
        role=role,
        content=content,
        status=status,
        create_time=when,
        update_time=when,
        model=conv.model,
        request_id=request_id,
    )


def reply(conv: Conversation, *, request_id: str = "", when: datetime = T0) -> Message:
    """A reply in flight (STREAMING, empty so far)."""
    return message(conv, "", role=Role.ASSISTANT, status=MessageStatus.STREAMING, request_id=request_id, when=when)


def lease(owner: str = "replica-a", epoch: int = 0, *, until: float = 30) -> Lease:
    return Lease(owner, epoch, at(until))


def coaching_session(conv: Conversation, *, max_duration: timedelta = timedelta(seconds=90.5)) -> CoachingSession:
    return CoachingSession(
        id=new_id(),
        owner=conv.owner,
        conversation_id=conv.id,
        persona="interviewer",
        limits=SessionLimits(max_turns=6, max_duration=max_duration),
        stage=Stage.ACTIVE,
        end_reason=EndReason.NONE,
        turns_used=0,
        start_time=T0,
        update_time=T0,
    )


async def stored(uow: UnitOfWorkFactory, *conversations: Conversation, messages: Sequence[Message] = ()) -> None:
    """Commit conversations and (finished) messages in one unit of work."""
    async with uow() as work:
        for conv in conversations:
            await work.conversations.add(conv)
        if messages:
            await work.messages.add(*messages)
        await work.commit()


async def walk(
    uow: UnitOfWorkFactory, read: Callable[[UnitOfWork, str | None], Awaitable[RowsPage[T]]]
) -> list[list[T]]:
    """Every page of a listing, each read in a unit of work of its own, following the cursors to the end."""
    pages, after = [], None
    while True:
        async with uow() as work:
            page = await read(work, after)
        pages.append(list(page.items))
        if page.cursor is None:
            return pages
        after = page.cursor


def assert_paged(pages: list[list[T]], whole: Sequence[T], limit: int) -> None:
    """The pages hold `whole` in order, each item once; every page is full but the last, which is not empty."""
    assert [item for page in pages for item in page] == list(whole)
    assert all(len(page) == limit for page in pages[:-1])
    assert 1 <= len(pages[-1]) <= limit


async def locked_twice(
    uow: UnitOfWorkFactory,
    read: Callable[[UnitOfWork], Awaitable[T]],
    write: Callable[[UnitOfWork, T], Awaitable[None]],
) -> None:
    """Read-modify-write in two units of work at once, the second starting while the first holds the row it read
    (`read` locks it): the second's read must wait for the first's commit, or one of the writes is lost."""
    first_holds, second_read = asyncio.Event(), asyncio.Event()

    async def first() -> None:
        async with uow() as work:
            current = await read(work)
            first_holds.set()
            # Room for the second read to come back, which only a missing lock lets it do before this commit.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(LOCK_GRACE_SECONDS):
                    await second_read.wait()
            await write(work, current)
            await work.commit()

    async def second() -> None:
        await first_holds.wait()
        async with uow() as work:
            current = await read(work)
            second_read.set()
            await write(work, current)
            await work.commit()

    async with asyncio.timeout(10):
        await asyncio.gather(first(), second())
