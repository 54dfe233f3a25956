"""Coach and ListPersonas over a real grpc.aio server, on SQLite and Postgres."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2

from chat.v1 import chat_pb2 as pb
from service.coaching.classifier import QUESTION
from service.domain import Prompt, Role
from service.llm.fake import FakeProvider
from tests.integration.coach_stream import CoachCall, end, start, turn
from tests.integration.harness import Replica, running_replica, settings_for
from tests.integration.rpc_errors import error_info, violations

pytestmark = pytest.mark.timeout(60)


class RecordingProvider(FakeProvider):
    """The fake model, remembering every prompt it was given."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.prompts: list[Prompt] = []

    def stream(self, prompt: Prompt) -> AsyncIterator[Any]:
        self.prompts.append(prompt)
        return super().stream(prompt)


@pytest.fixture
async def provider() -> RecordingProvider:
    return RecordingProvider(reply_tokens=12)


@pytest.fixture
async def replica(database_url: str, provider: RecordingProvider) -> AsyncIterator[Replica]:
    settings = settings_for(database_url, speech_provider="none")
    async with running_replica(settings, provider) as running:
        yield running


async def coach(replica: Replica, user: str = "alice") -> CoachCall:
    return CoachCall(replica.stub, await replica.auth(user))


async def messages(replica: Replica, user: str, conversation_id: str) -> list[pb.Message]:
    response = await replica.stub.ListMessages(
        pb.ListMessagesRequest(conversation_id=conversation_id), metadata=await replica.auth(user)
    )
    return list(response.messages)


def duration(seconds: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromTimedelta(timedelta(seconds=seconds))
    return value


# ---------------------------------------------------------------------------------------------- personas


async def test_list_personas_pages_through_the_catalog(replica: Replica) -> None:
    auth = await replica.auth("alice")
    everything = await replica.stub.ListPersonas(pb.ListPersonasRequest(), metadata=auth)
    first = await replica.stub.ListPersonas(pb.ListPersonasRequest(page_size=2), metadata=auth)
    rest = await replica.stub.ListPersonas(
        pb.ListPersonasRequest(page_size=100, page_token=first.next_page_token), metadata=auth
    )

    names = [p.name for p in everything.personas]
    assert {"english_buddy", "interview_coach", "socratic_tutor"} <= set(names)
    assert [p.name for p in [*first.personas, *rest.personas]] == names
    assert rest.next_page_token == ""
    buddy = next(p for p in everything.personas if p.name == "english_buddy")
    assert buddy.display_name == "English Buddy"
    assert "corrects" in buddy.description


# ---------------------------------------------------------------------------------------------- flows


async def test_wrap_up_flow_asks_then_ends_with_a_summary(replica: Replica, provider: RecordingProvider) -> None:
    call = await coach(replica)
    started = await call.begin(persona="english_buddy")
    session = started.session
    assert not started.rejoined
    assert session.stage == pb.COACHING_STAGE_ACTIVE
    assert session.persona == "english_buddy"

    reply = await call.ask(turn("Yesterday I goed to the shop."), "turn_completed")
    assert reply.last is not None
    completed = reply.last.turn_completed
    assert completed.turns_used == 1
    assert reply.text == completed.message.content != ""
    assert completed.user_message.content == "Yesterday I goed to the shop."
    assert provider.prompts[-1].turns[0].role is Role.SYSTEM
    assert "English Buddy" in provider.prompts[-1].turns[0].content

    asked = await call.ask(turn("Sorry, I HAVE to goo now"), "wrap_up_confirmation")
    assert asked.last is not None
    assert "wrap up" in asked.last.wrap_up_confirmation.prompt
    assert asked.deltas == []

    closing = await call.ask(turn("yes"), "session_ended")
    assert closing.last is not None
    ended = closing.last.session_ended
    assert ended.reason == pb.END_REASON_USER_REQUESTED
    assert ended.summary == closing.text == ended.message.content != ""
    assert ended.session.stage == pb.COACHING_STAGE_ENDED
    assert ended.session.turns_used == 1
    closing_prompt = provider.prompts[-1].turns[-1]
    assert closing_prompt.role is Role.SYSTEM and "summary" in closing_prompt.content
    await call.ended()

    stored = await messages(replica, "alice", session.conversation_id)
    assert [(m.role, m.content) for m in stored] == [
        (pb.ROLE_USER, "Yesterday I goed to the shop."),
        (pb.ROLE_ASSISTANT, completed.message.content),
        (pb.ROLE_USER, "Sorry, I HAVE to goo now"),
        (pb.ROLE_ASSISTANT, asked.last.wrap_up_confirmation.prompt),
        (pb.ROLE_USER, "yes"),
        (pb.ROLE_ASSISTANT, ended.summary),
    ]
    assert all(m.status == pb.MESSAGE_STATUS_COMPLETED for m in stored)


async def test_declining_goes_on_with_a_normal_reply(replica: Replica) -> None:
    call = await coach(replica)
    await call.begin(persona="interview_coach")

    await call.ask(turn("Let's stop here"), "wrap_up_confirmation")
    declined = await call.ask(turn("no, one more question please"), "turn_completed")
    assert declined.last is not None
    assert declined.last.turn_completed.turns_used == 1
    assert declined.text == declined.last.turn_completed.message.content != ""

    again = await call.ask(turn("What about salary questions?"), "turn_completed")
    assert again.last is not None
    assert again.last.turn_completed.turns_used == 2

    await call.ask(turn("ok can we wrap up?"), "wrap_up_confirmation")
    await call.ask(turn("Not yet, actually"), "turn_completed")
    finished = await call.ask(end(), "session_ended")
    assert finished.last is not None
    assert finished.last.session_ended.reason == pb.END_REASON_CLIENT_ENDED
    await call.ended()


async def test_turn_limit_ends_the_session_without_asking(replica: Replica) -> None:
    call = await coach(replica)
    started = await call.begin(persona="socratic_tutor", max_turns=2)
    assert started.session.max_turns == 2

    await call.ask(turn("Why is the sky blue?"), "turn_completed")
    last = await call.ask(turn("Because of the sun?"), "turn_completed")
    assert last.last is not None
    assert last.last.turn_completed.turns_used == 2
    closing = await call.read_until("session_ended")
    assert closing.last is not None
    ended = closing.last.session_ended
    assert ended.reason == pb.END_REASON_LIMIT_REACHED
    assert ended.summary == closing.text != ""
    await call.ended()

    stored = await messages(replica, "alice", started.session.conversation_id)
    assert [m.role for m in stored] == [pb.ROLE_USER, pb.ROLE_ASSISTANT] * 2 + [pb.ROLE_ASSISTANT]


async def test_duration_limit_ends_an_idle_session(replica: Replica) -> None:
    call = await coach(replica)
    started = await call.begin(persona="english_buddy", max_duration=duration(0.5))
    assert started.session.max_duration.ToTimedelta() == timedelta(seconds=0.5)

    await call.ask(turn("Hello!"), "turn_completed")
    closing = await call.read_until("session_ended")  # no more turns: the time runs out while waiting

    assert closing.last is not None
    assert closing.last.session_ended.reason == pb.END_REASON_LIMIT_REACHED
    await call.ended()


async def test_client_end_ends_at_once_with_a_summary(replica: Replica, provider: RecordingProvider) -> None:
    call = await coach(replica)
    started = await call.begin(persona="english_buddy")
    await call.ask(turn("I like to cook pasta."), "turn_completed")

    closing = await call.ask(end(), "session_ended")

    assert closing.last is not None
    ended = closing.last.session_ended
    assert ended.reason == pb.END_REASON_CLIENT_ENDED
    assert ended.summary == closing.text != ""
    assert "ended the session" in provider.prompts[-1].turns[-1].content
    await call.ended()
    stored = await messages(replica, "alice", started.session.conversation_id)
    assert [m.role for m in stored] == [pb.ROLE_USER, pb.ROLE_ASSISTANT, pb.ROLE_ASSISTANT]
    assert stored[-1].content == ended.summary


async def test_a_finished_session_refuses_further_turns(replica: Replica) -> None:
    call = await coach(replica)
    started = await call.begin(persona="english_buddy")
    await call.ask(end(), "session_ended")
    await call.ended()

    rejoin = await coach(replica)
    await rejoin.send(start(session_id=started.session.session_id))
    await rejoin.send(turn("one more?"))
    error = await rejoin.error()

    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "ended" in (error.details() or "")
    assert error_info(error).metadata["stage"] == "ended"


async def test_rejoin_after_a_dropped_stream_keeps_the_state(replica: Replica) -> None:
    call = await coach(replica)
    first = (await call.begin(persona="english_buddy", max_duration=duration(3600))).session
    await call.ask(turn("Hi, I am Ana."), "turn_completed")
    await call.ask(turn("I must go, bye"), "wrap_up_confirmation")
    call.call.cancel()  # the connection drops while the coach waits for the answer

    again = await coach(replica)
    rejoined = await again.begin(session_id=first.session_id)
    session = rejoined.session
    assert rejoined.rejoined
    assert session.session_id == first.session_id
    assert session.conversation_id == first.conversation_id
    assert session.stage == pb.COACHING_STAGE_CONFIRMING
    assert session.turns_used == 1
    assert session.start_time == first.start_time
    assert session.time_left.ToTimedelta() < first.time_left.ToTimedelta()

    closing = await again.ask(turn("yes"), "session_ended")
    assert closing.last is not None
    assert closing.last.session_ended.reason == pb.END_REASON_USER_REQUESTED
    await again.ended()


async def test_rejoin_counts_turns_across_streams(replica: Replica) -> None:
    call = await coach(replica)
    first = (await call.begin(persona="english_buddy", max_turns=2)).session
    await call.ask(turn("Good morning!"), "turn_completed")
    await call.call.done_writing()  # the client closes its side: the session stays open
    await call.ended()

    again = await coach(replica)
    await again.begin(session_id=first.session_id)
    last = await again.ask(turn("How are you?"), "turn_completed")
    assert last.last is not None
    assert last.last.turn_completed.turns_used == 2
    closing = await again.read_until("session_ended")
    assert closing.last is not None
    assert closing.last.session_ended.reason == pb.END_REASON_LIMIT_REACHED


# ---------------------------------------------------------------------------------------------- errors


async def test_another_users_session_is_permission_denied(replica: Replica) -> None:
    alice = await coach(replica, "alice")
    session = (await alice.begin(persona="english_buddy")).session

    bob = await coach(replica, "bob")
    await bob.send(start(session_id=session.session_id))
    error = await bob.error()
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED

    bob_again = await coach(replica, "bob")
    await bob_again.send(start(persona="english_buddy", conversation_id=session.conversation_id))
    error = await bob_again.error()
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED


async def test_a_turn_before_start_is_invalid(replica: Replica) -> None:
    call = await coach(replica)
    await call.send(turn("hello?"))
    error = await call.error()

    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "start" in violations(error)


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.CoachRequest(), "request"),
        (start(), "start.persona"),
        (start(persona="pirate"), "start.persona"),
        (start(persona="english_buddy", max_turns=-1), "start.max_turns"),
        (start(session_id="not-a-uuid"), "start.session_id"),
        (start(persona="english_buddy", conversation_id="nope"), "conversation_id"),
    ],
)
async def test_bad_start_is_invalid(replica: Replica, request_: pb.CoachRequest, field: str) -> None:
    call = await coach(replica)
    await call.send(request_)
    error = await call.error()

    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field in violations(error)


async def test_bad_turns_are_invalid(replica: Replica) -> None:
    call = await coach(replica)
    await call.begin(persona="english_buddy")
    await call.send(turn("   "))
    error = await call.error()

    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "user_turn.text" in violations(error)


async def test_a_second_start_is_invalid(replica: Replica) -> None:
    call = await coach(replica)
    await call.begin(persona="english_buddy")
    await call.send(start(persona="english_buddy"))
    error = await call.error()

    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "start" in violations(error)


async def test_an_unknown_session_is_not_found(replica: Replica) -> None:
    call = await coach(replica)
    await call.send(start(session_id="6f1c1f38-9c57-4a4a-9d0e-2b8f1f0c2a11"))

    assert (await call.error()).code() is grpc.StatusCode.NOT_FOUND


async def test_coaching_in_an_existing_conversation(replica: Replica) -> None:
    conversation = await replica.conversation("alice", title="my practice")
    call = await coach(replica)
    started = await call.begin(persona="english_buddy", conversation_id=conversation.conversation_id)
    await call.ask(turn("Hello"), "turn_completed")

    assert started.session.conversation_id == conversation.conversation_id
    got = await replica.stub.GetConversation(
        pb.GetConversationRequest(conversation_id=conversation.conversation_id), metadata=await replica.auth("alice")
    )
    assert got.conversation.persona == "english_buddy"
    assert len(await messages(replica, "alice", conversation.conversation_id)) == 2


async def test_a_conversation_with_other_instructions_is_refused(replica: Replica) -> None:
    conversation = await replica.conversation("alice", system_prompt="Be a pirate.")
    call = await coach(replica)
    await call.send(start(persona="english_buddy", conversation_id=conversation.conversation_id))
    error = await call.error()

    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "start.conversation_id" in violations(error)


async def test_unauthenticated_coach_is_refused(replica: Replica) -> None:
    call = CoachCall(replica.stub, ())
    with contextlib.suppress(grpc.aio.AioRpcError):  # the refusal may come before the request is written
        await call.send(start(persona="english_buddy"))

    assert (await call.error()).code() is grpc.StatusCode.UNAUTHENTICATED


async def test_pipelined_requests_like_grpcurl_sends_them(replica: Replica) -> None:
    """All messages written at once, then the client's side closed: the server takes them turn by turn."""
    auth = await replica.auth("alice")
    requests = [start(persona="english_buddy"), turn("Hi!"), turn("I have to go"), turn("yes")]
    responses = [r async for r in replica.stub.Coach(iter(requests), metadata=auth)]
    kinds = [r.WhichOneof("response") for r in responses if r.WhichOneof("response") != "delta"]

    assert kinds == ["session_started", "turn_completed", "wrap_up_confirmation", "session_ended"]
    assert responses[-1].session_ended.reason == pb.END_REASON_USER_REQUESTED


async def test_audio_without_a_transcriber_is_failed_precondition(replica: Replica) -> None:
    from tests.integration.coach_stream import audio_turn
    from tests.wire.audio_server import wav_bytes

    call = await coach(replica)
    await call.begin(persona="english_buddy")
    await call.send(audio_turn(wav_bytes()))
    error = await call.error()

    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "CHAT_TRANSCRIPTION_URL" in (error.details() or "")


async def test_speech_without_a_synthesizer_is_failed_precondition(replica: Replica) -> None:
    call = await coach(replica)
    await call.send(start(persona="english_buddy", speak=True))
    error = await call.error()

    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "CHAT_SPEECH_URL" in (error.details() or "")


async def test_sessions_survive_a_stream_that_is_cancelled_mid_reply(database_url: str) -> None:
    slow = RecordingProvider(tokens_per_second=40, reply_tokens=20)
    async with running_replica(settings_for(database_url, speech_provider="none"), slow) as replica:
        call = await coach(replica)
        session = (await call.begin(persona="english_buddy")).session
        await call.send(turn("Tell me a story"))
        await call.call.read()  # the first delta: the reply is generating
        call.call.cancel()

        again = await coach(replica)
        await again.begin(session_id=session.session_id)
        async with asyncio.timeout(15):
            while True:  # the dropped reply completes on the server; then the next turn is accepted
                stored = await messages(replica, "alice", session.conversation_id)
                if stored[-1].status == pb.MESSAGE_STATUS_COMPLETED:
                    break
                await asyncio.sleep(0.05)
        closing = await again.ask(end(), "session_ended")
        assert closing.last is not None
        assert closing.last.session_ended.reason == pb.END_REASON_CLIENT_ENDED


async def test_a_stream_open_at_shutdown_is_finished_before_the_database_closes(database_url: str) -> None:
    async with running_replica(settings_for(database_url, speech_provider="none")) as replica:
        call = await coach(replica)
        await call.begin(persona="english_buddy")
        await call.ask(turn("Hello!"), "turn_completed")
        # Leaving the block closes the channel and stops the replica while the stream is open.

    handlers = [t for t in asyncio.all_tasks() if "ChatService/Coach" in t.get_name() and not t.done()]
    assert handlers == []


async def test_an_ambiguous_turn_is_put_to_the_model(replica: Replica, provider: RecordingProvider) -> None:
    call = await coach(replica)
    await call.begin(persona="english_buddy")

    reply = await call.ask(turn("I think I'll head off soon"), "turn_completed")  # the fake model never says yes

    assert reply.last is not None
    questions = [p for p in provider.prompts if p.turns[0].content == QUESTION]
    assert [p.turns[-1].content for p in questions] == ["I think I'll head off soon"]
    assert questions[0].max_tokens <= 4
