"""Audio turns and spoken replies over a real grpc.aio server, against a local server speaking the OpenAI
audio endpoints' wire format (and espeak-ng when it is installed)."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from http import HTTPStatus

import grpc
import pytest

from chat.v1 import chat_pb2 as pb
from tests.integration.coach_stream import CoachCall, audio_turn, end, turn
from tests.integration.harness import Replica, running_replica, settings_for
from tests.integration.rpc_errors import violations
from tests.wire.audio_server import AudioServer, wav_bytes

pytestmark = pytest.mark.timeout(60)

MAX_AUDIO = 4000


@pytest.fixture
async def audio_server() -> AsyncIterator[AudioServer]:
    async with AudioServer(transcript="I goed to the park yesterday.", api_key="sk-audio") as server:
        yield server


@pytest.fixture
async def replica(database_url: str, audio_server: AudioServer) -> AsyncIterator[Replica]:
    settings = settings_for(
        database_url,
        transcription_url=audio_server.url,
        speech_url=audio_server.url,
        audio_api_key="sk-audio",
        max_audio_bytes=MAX_AUDIO,
    )
    async with running_replica(settings) as running:
        yield running


async def coach(replica: Replica) -> CoachCall:
    return CoachCall(replica.stub, await replica.auth("alice"))


async def test_an_audio_turn_is_transcribed_stored_and_answered_with_speech(
    replica: Replica, audio_server: AudioServer
) -> None:
    clip = wav_bytes(0.05)
    call = await coach(replica)
    session = (await call.begin(persona="english_buddy", speak=True)).session

    reply = await call.ask(audio_turn(clip), "turn_completed")

    assert reply.last is not None
    completed = reply.last.turn_completed
    assert completed.user_message.content == "I goed to the park yesterday."
    assert completed.message.content == reply.text != ""
    assert completed.audio.data == audio_server.speech
    assert completed.audio.mime_type == "audio/wav"
    assert audio_server.uploads[0].file == clip
    assert audio_server.uploads[0].content_type == "audio/wav"
    assert audio_server.speech_requests[0]["input"] == completed.message.content

    closing = await call.ask(end(), "session_ended")
    assert closing.last is not None
    assert closing.last.session_ended.audio.data == audio_server.speech
    assert audio_server.speech_requests[-1]["input"] == closing.last.session_ended.summary
    stored = await replica.stub.ListMessages(
        pb.ListMessagesRequest(conversation_id=session.conversation_id), metadata=await replica.auth("alice")
    )
    assert stored.messages[0].content == "I goed to the park yesterday."


async def test_a_spoken_request_to_finish_is_confirmed_like_a_typed_one(
    replica: Replica, audio_server: AudioServer
) -> None:
    audio_server.transcript = "Sorry, I have to go now."
    call = await coach(replica)
    await call.begin(persona="english_buddy")

    asked = await call.ask(audio_turn(wav_bytes(0.05), "audio/ogg; codecs=opus"), "wrap_up_confirmation")

    assert asked.last is not None
    assert audio_server.uploads[0].filename == "speech.ogg"
    closing = await call.ask(turn("yes"), "session_ended")
    assert closing.last is not None
    assert closing.last.session_ended.reason == pb.END_REASON_USER_REQUESTED


async def test_audio_over_the_size_limit_is_invalid(replica: Replica, audio_server: AudioServer) -> None:
    call = await coach(replica)
    await call.begin(persona="english_buddy")
    await call.send(audio_turn(b"\x00" * (MAX_AUDIO + 1)))
    error = await call.error()

    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert violations(error)["user_turn.audio.data"] == f"is {MAX_AUDIO + 1} bytes; the limit is {MAX_AUDIO}"
    assert audio_server.uploads == []


@pytest.mark.parametrize(
    ("mime_type", "data", "field"),
    [
        ("audio/mpeg", b"ID3", "user_turn.audio.mime_type"),
        ("", b"RIFF", "user_turn.audio.mime_type"),
        ("audio/wav", b"", "user_turn.audio.data"),
    ],
)
async def test_bad_audio_is_invalid(replica: Replica, mime_type: str, data: bytes, field: str) -> None:
    call = await coach(replica)
    await call.begin(persona="english_buddy")
    await call.send(audio_turn(data, mime_type))
    error = await call.error()

    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field in violations(error)


async def test_silence_is_invalid(replica: Replica, audio_server: AudioServer) -> None:
    audio_server.transcript = "  "
    call = await coach(replica)
    await call.begin(persona="english_buddy")
    await call.send(audio_turn(wav_bytes(0.05)))
    error = await call.error()

    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert violations(error)["user_turn.audio"] == "no speech was recognised"


async def test_a_failing_transcription_server_is_unavailable(replica: Replica, audio_server: AudioServer) -> None:
    audio_server.status = HTTPStatus.BAD_GATEWAY
    call = await coach(replica)
    await call.begin(persona="english_buddy")
    await call.send(audio_turn(wav_bytes(0.05)))
    error = await call.error()

    assert error.code() is grpc.StatusCode.UNAVAILABLE
    assert error.details() == "the transcription server failed (HTTP 502)"


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
async def test_espeak_speaks_the_replies(database_url: str) -> None:
    async with running_replica(settings_for(database_url, speech_provider="espeak")) as replica:
        call = await coach(replica)
        await call.begin(persona="english_buddy", speak=True)
        reply = await call.ask(turn("Hello!"), "turn_completed")

    assert reply.last is not None
    speech = reply.last.turn_completed.audio
    assert speech.mime_type == "audio/wav"
    assert speech.data[:4] == b"RIFF"
