"""Several Coach streams on one coaching session, racing, over a real server on SQLite and Postgres.

The races are interleaved by events, not by timing: the test's model holds a finish verdict, a reply or
the closing words until the test lets it go, so each test puts the other stream's step exactly inside
the first one's. The stored stage history (database triggers, `stage_log`) must follow the state machine
whatever the interleaving: never backwards, ENDED final, never two questions in a row.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chat.v1 import chat_pb2 as pb
from service.coaching.classifier import QUESTION
from service.coaching.steps import CONFIRMATION
from service.domain import Completion, Prompt, Role
from service.llm.fake import FakeProvider
from tests.conftest import _truncate
from tests.integration.coach_stream import READ_TIMEOUT, CoachCall, end, kind, start, turn
from tests.integration.harness import Replica, running_replica, settings_for
from tests.integration.rpc_errors import error_info
from tests.integration.stage_log import StageLog, Stored, illegal_moves, stage_log

pytestmark = pytest.mark.timeout(120)

# grpcio's aio client replaces the server's status with this when a request write loses the race with the end
# of the call (grpc/grpc#36066): the server's own statuses are read from its access log instead.
CLIENT_WRITE_RACE = (grpc.StatusCode.INTERNAL, "Internal error from Core")
AMBIGUOUS = "I think I'll head off soon"  # the text rules cannot tell: the model is asked
GATE_TIMEOUT = 10.0


class GatedModel(FakeProvider):
    """The fake model, except that the kinds of call named in `gated` wait for the test: each such call
    puts a future on its queue and goes on (with the verdict, or with the rest of the reply) once the test
    sets it."""

    def __init__(self, *gated: str) -> None:
        super().__init__(reply_tokens=8)
        self.gated = set(gated)
        self.calls: dict[str, asyncio.Queue[asyncio.Future[str]]] = {k: asyncio.Queue() for k in gated}

    async def stream(self, prompt: Prompt) -> AsyncIterator[Any]:
        what = _kind_of(prompt)
        if what == "verdict":
            answer = await self._gate(what) if what in self.gated else "no"
            yield answer
            yield Completion()
            return
        first = True
        async for piece in super().stream(prompt):
            yield piece
            if first and what in self.gated:  # the reply is stored and has begun: hold the rest
                first = False
                await self._gate(what)

    async def _gate(self, what: str) -> str:
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        await self.calls[what].put(future)
        return await future

    async def next_call(self, what: str) -> asyncio.Future[str]:
        return await asyncio.wait_for(self.calls[what].get(), GATE_TIMEOUT)


def _kind_of(prompt: Prompt) -> str:
    if prompt.turns[0].content == QUESTION:
        return "verdict"
    last = prompt.turns[-1]
    if last.role is Role.SYSTEM and "The coaching session is ending now" in last.content:
        return "closing"
    return "reply"


@pytest.fixture
async def log(database_url: str) -> AsyncIterator[StageLog]:
    async with stage_log(database_url) as recorded:
        yield recorded


def replica_with(
    database_url: str, model: FakeProvider, **overrides: Any
) -> contextlib.AbstractAsyncContextManager[Replica]:
    settings = settings_for(
        database_url, speech_provider="none", rate_limit_per_minute=0, max_concurrent_streams=0, **overrides
    )
    return running_replica(settings, model)


async def two_streams(replica: Replica) -> tuple[CoachCall, CoachCall, pb.CoachingSession]:
    """One session, and two streams on it: the one that started it and one that rejoined."""
    auth = await replica.auth("alice")
    first = CoachCall(replica.stub, auth)
    session = (await first.begin(persona="english_buddy")).session
    second = CoachCall(replica.stub, auth)
    assert (await second.begin(session_id=session.session_id)).rejoined
    return first, second, session


async def stored_stage(replica: Replica, session_id: str) -> str:
    async with replica.app.deps.database.unit_of_work() as uow:
        stored = await uow.coaching_sessions.get(session_id)
    assert stored is not None
    return stored.stage.value


async def conversation(replica: Replica, conversation_id: str) -> list[pb.Message]:
    response = await replica.stub.ListMessages(
        pb.ListMessagesRequest(conversation_id=conversation_id, page_size=1000), metadata=await replica.auth("alice")
    )
    return list(response.messages)


# ---------------------------------------------------------------------------------------------- races


async def test_an_end_is_not_undone_by_a_turn_decided_before_it(database_url: str, log: StageLog) -> None:
    model = GatedModel("verdict", "closing")
    async with replica_with(database_url, model) as replica:
        a, b, session = await two_streams(replica)
        await a.send(turn(AMBIGUOUS))
        verdict = await model.next_call("verdict")  # A read the session (ACTIVE) and asks the model
        await b.send(end())
        closing = await model.next_call("closing")  # B stored WRAPPING_UP and the closing words have begun
        verdict.set_result("no")  # A goes on with its decision: a normal reply, on a session that is ending

        refused = await a.error()
        assert refused.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert error_info(refused).metadata["stage"] == "wrapping_up"
        closing.set_result("")
        ended = await b.read_until("session_ended")
        assert ended.last is not None and ended.last.session_ended.reason == pb.END_REASON_CLIENT_ENDED
        await b.ended()

        history = await log.history(session.session_id)
        assert illegal_moves(history) == []
        assert [s.stage for s in history] == ["active", "wrapping_up", "ended"]
        assert await stored_stage(replica, session.session_id) == "ended"


async def test_an_ended_session_is_not_resurrected_by_a_turn_decided_before_it(
    database_url: str, log: StageLog
) -> None:
    model = GatedModel("verdict")
    async with replica_with(database_url, model) as replica:
        a, b, session = await two_streams(replica)
        await a.send(turn(AMBIGUOUS))
        verdict = await model.next_call("verdict")
        ended = await b.ask(end(), "session_ended")  # B ends the session completely meanwhile
        await b.ended()
        verdict.set_result("no")

        refused = await a.error()
        assert refused.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert error_info(refused).metadata["stage"] == "ended"
        assert [s.stage for s in await log.history(session.session_id)] == ["active", "wrapping_up", "ended"]
        stored = await conversation(replica, session.conversation_id)
        assert ended.last is not None
        assert stored[-1].message_id == ended.last.session_ended.message.message_id  # nothing after the end


async def test_two_finish_requests_at_once_ask_only_once(database_url: str, log: StageLog) -> None:
    model = GatedModel("verdict")
    async with replica_with(database_url, model) as replica:
        a, b, session = await two_streams(replica)
        await a.send(turn(AMBIGUOUS))
        a_verdict = await model.next_call("verdict")
        await b.send(turn(AMBIGUOUS))
        b_verdict = await model.next_call("verdict")
        # Both streams read an ACTIVE session; both are told "yes, the learner asks to finish".
        a_verdict.set_result("yes")
        first = await a.read_until("wrap_up_confirmation", "turn_completed")
        b_verdict.set_result("yes")
        second = await b.read_until("wrap_up_confirmation", "turn_completed")

        kinds = sorted(kind(x.last) for x in (first, second) if x.last is not None)
        # One question; the other request, taken after it, is not a yes to it: a normal reply.
        assert kinds == ["turn_completed", "wrap_up_confirmation"]
        history = await log.history(session.session_id)
        assert illegal_moves(history) == []
        assert [s.stage for s in history] == ["active", "confirming", "active"]


async def test_an_end_during_another_streams_reply_waits_for_it_then_ends(database_url: str, log: StageLog) -> None:
    model = GatedModel("reply")
    async with replica_with(database_url, model) as replica:
        a, b, session = await two_streams(replica)
        await a.send(turn("Tell me about your day"))
        reply = await model.next_call("reply")  # A's reply is stored and generating
        await b.send(end())
        reply.set_result("")

        answered = await a.read_until("turn_completed")
        ended = await b.read_until("session_ended")
        assert answered.last is not None and answered.last.turn_completed.turns_used == 1
        assert ended.last is not None and ended.last.session_ended.reason == pb.END_REASON_CLIENT_ENDED
        history = await log.history(session.session_id)
        assert illegal_moves(history) == []
        assert [s.stage for s in history] == ["active", "active", "wrapping_up", "ended"]
        stored = await conversation(replica, session.conversation_id)
        assert [m.role for m in stored] == [pb.ROLE_USER, pb.ROLE_ASSISTANT, pb.ROLE_ASSISTANT]
        assert stored[-1].message_id == ended.last.session_ended.message.message_id


# ---------------------------------------------------------------------------------------------- property

TEXTS = ["Hello there", "Tell me more", "I have to go", "yes", "no, go on", "bye"]
Action = tuple[str, int, str]  # (what, stream, text): send a turn, send end, settle (read), or rejoin
actions = st.lists(
    st.one_of(
        st.tuples(st.just("turn"), st.integers(0, 1), st.sampled_from(TEXTS)),
        st.tuples(st.just("end"), st.integers(0, 1), st.just("")),
        st.tuples(st.just("settle"), st.integers(0, 1), st.just("")),
        st.tuples(st.just("rejoin"), st.integers(0, 1), st.just("")),
    ),
    min_size=1,
    max_size=12,
)


@dataclass
class Stream:
    call: CoachCall
    pending: int = 0  # commands sent and not answered yet
    over: bool = False
    seen: list[str] = field(default_factory=list)
    errors: list[grpc.aio.AioRpcError] = field(default_factory=list)

    async def started(self) -> None:
        """The first response: session_started, or the refusal of a session that has ended."""
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                response = await self.call.call.read()
        except grpc.aio.AioRpcError as error:
            self.errors.append(error)
            self.over = True
            return
        assert response is not grpc.aio.EOF and kind(response) == "session_started", response

    async def settle(self, *, to_the_end: bool = False) -> None:
        """Read until every command sent is answered (or, `to_the_end`, until the server closes)."""
        async with asyncio.timeout(READ_TIMEOUT):
            while not self.over and (self.pending or to_the_end):
                try:
                    response = await self.call.call.read()
                except grpc.aio.AioRpcError as error:
                    self.errors.append(error)
                    self.over = True
                    return
                if response is grpc.aio.EOF:
                    self.over = True
                    return
                what = kind(response)
                if what in ("turn_completed", "wrap_up_confirmation"):
                    self.pending -= 1
                if what != "delta":
                    self.seen.append(what)
                if what == "session_ended":
                    self.over = True


async def interleave(replicas: tuple[Replica, Replica], log: StageLog, script: list[Action]) -> None:
    """Run `script` on two streams of one session, stream i on replicas[i]; then check what was stored."""
    auth = await replicas[0].auth("alice")
    first = CoachCall(replicas[0].stub, auth)
    session = (await first.begin(persona="english_buddy")).session
    streams = [Stream(first), Stream(CoachCall(replicas[1].stub, auth))]
    await streams[1].call.begin(session_id=session.session_id)
    for what, index, text in script:
        stream = streams[index]
        if what == "rejoin":  # the client drops this stream and opens another on the session
            stream.call.call.cancel()
            stream = streams[index] = Stream(CoachCall(replicas[index].stub, auth))
            await stream.call.send(start(session_id=session.session_id))
            await stream.started()
            continue
        if stream.over:
            continue
        if what == "settle":
            await stream.settle()
            continue
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):  # the server ended it
            await stream.call.send(turn(text) if what == "turn" else end())
            stream.pending += 1
    for stream in streams:
        if not stream.over:
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                await stream.call.call.done_writing()
            await stream.settle(to_the_end=True)

    history = await log.history(session.session_id)
    assert illegal_moves(history) == [], history
    for stream in streams:
        for error in stream.errors:  # the only refusal: a turn on a session that is ending or has ended
            if (error.code(), error.details()) == CLIENT_WRITE_RACE:
                continue
            assert error.code() is grpc.StatusCode.FAILED_PRECONDITION, error.details()
            assert error_info(error).metadata["stage"] in ("wrapping_up", "ended"), error.details()
        if "session_ended" in stream.seen:
            assert history[-1] == Stored("ended", history[-1].turns)
    if replicas[0] is not replicas[1]:
        return  # across replicas the stages are kept legal; the messages of two racing steps may interleave
    messages = await conversation(replicas[0], session.conversation_id)
    answers = [m.content for m in messages if m.role is pb.ROLE_ASSISTANT]
    asked = [a == CONFIRMATION for a in answers]
    assert not any(x and y for x, y in itertools.pairwise(asked)), answers  # never twice in a row
    if history[-1].stage == "ended":
        assert not asked[-1]


class CoachStatuses(logging.Handler):
    """The status of every Coach call as the server logged it (the access log)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.codes: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == "rpc" and str(record.__dict__.get("method")).endswith("/Coach"):
            self.codes.add(str(record.__dict__.get("code")))


@pytest.fixture
def coach_statuses() -> Iterator[CoachStatuses]:
    handler, access = CoachStatuses(), logging.getLogger("service.access")
    level = access.level
    access.setLevel(logging.INFO)
    access.addHandler(handler)
    try:
        yield handler
    finally:
        access.removeHandler(handler)
        access.setLevel(level)


def explore(replicas: tuple[Replica, Replica], log: StageLog, loop: asyncio.AbstractEventLoop) -> None:
    """Hypothesis drives the examples from a worker thread; each runs on `loop`, next to the servers."""

    @settings(max_examples=20, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(script=actions)
    def check(script: list[Action]) -> None:
        example = interleave(replicas, log, script)
        try:
            asyncio.run_coroutine_threadsafe(example, loop).result(timeout=READ_TIMEOUT * 4)
        except grpc.aio.AioRpcError as error:  # report it as text: grpc objects stay on their own loop
            raise AssertionError(f"{error.code()}: {error.details()}") from None

    check()


async def test_any_interleaving_of_two_streams_keeps_the_stage_history_legal(
    database_url: str, log: StageLog, coach_statuses: CoachStatuses
) -> None:
    async with replica_with(database_url, FakeProvider(reply_tokens=6)) as replica:
        await asyncio.to_thread(explore, (replica, replica), log, asyncio.get_running_loop())
    # As the server ended the streams (also those whose client saw its own write race): done, refused
    # (FAILED_PRECONDITION, checked above where the client saw it), or dropped by the client.
    assert coach_statuses.codes <= {"OK", "FAILED_PRECONDITION", "CANCELLED"}, coach_statuses.codes


@pytest.mark.postgres
async def test_two_streams_on_two_replicas_keep_the_stage_history_legal(
    postgres_database: str, coach_statuses: CoachStatuses
) -> None:
    """No lock is shared across replicas: the claims' compare-and-set alone keeps the stages legal."""
    await _truncate(postgres_database)
    async with (
        stage_log(postgres_database) as log,
        replica_with(postgres_database, FakeProvider(reply_tokens=6), replica_id="a") as a,
        replica_with(postgres_database, FakeProvider(reply_tokens=6), replica_id="b") as b,
    ):
        await asyncio.to_thread(explore, (a, b), log, asyncio.get_running_loop())
    assert coach_statuses.codes <= {"OK", "FAILED_PRECONDITION", "CANCELLED"}, coach_statuses.codes
