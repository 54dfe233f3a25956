"""The speech adapters against a real HTTP server speaking the OpenAI audio wire format, and espeak-ng."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from http import HTTPStatus

import pytest

from service.audio import Unconfigured, build_synthesizer, build_transcriber
from service.audio.espeak import EspeakSynthesizer
from service.audio.openai import OpenAISynthesizer, OpenAITranscriber
from service.domain import FailedPrecondition, Unavailable
from service.ports import Audio
from service.settings import Settings
from tests.net import free_port
from tests.wire.audio_server import AudioServer, wav_bytes

pytestmark = pytest.mark.timeout(15)

API_KEY = "sk-audio"


@pytest.fixture
async def server() -> AsyncIterator[AudioServer]:
    async with AudioServer(transcript="  I have to go  ", api_key=API_KEY) as running:
        yield running


async def test_transcribe_uploads_the_audio_as_multipart(server: AudioServer) -> None:
    transcriber = OpenAITranscriber(server.url, model="whisper-large", api_key=API_KEY, timeout=5)
    clip = wav_bytes()
    try:
        text = await transcriber.transcribe(Audio(clip, "audio/wav"))
    finally:
        await transcriber.aclose()

    assert text == "I have to go"
    (upload,) = server.uploads
    assert upload.file == clip
    assert upload.filename == "speech.wav"
    assert upload.content_type == "audio/wav"
    assert upload.fields == {"model": "whisper-large", "response_format": "json"}


async def test_transcribe_names_ogg_files_by_type(server: AudioServer) -> None:
    transcriber = OpenAITranscriber(server.url, model="whisper-1", api_key=API_KEY, timeout=5)
    try:
        await transcriber.transcribe(Audio(b"OggS\x00fake", "audio/ogg; codecs=opus"))
    finally:
        await transcriber.aclose()

    assert server.uploads[0].filename == "speech.ogg"
    assert server.uploads[0].file == b"OggS\x00fake"


async def test_synthesize_returns_the_servers_audio(server: AudioServer) -> None:
    synthesizer = OpenAISynthesizer(server.url, model="tts-1", voice="nova", api_key=API_KEY, timeout=5)
    try:
        speech = await synthesizer.synthesize("Well done today!")
    finally:
        await synthesizer.aclose()

    assert speech == Audio(server.speech, "audio/wav")
    assert server.speech_requests == [
        {"model": "tts-1", "input": "Well done today!", "voice": "nova", "response_format": "wav"}
    ]


@pytest.mark.parametrize("status", [HTTPStatus.INTERNAL_SERVER_ERROR, HTTPStatus.BAD_REQUEST])
async def test_server_errors_are_unavailable_without_upstream_text(server: AudioServer, status: HTTPStatus) -> None:
    server.status = status
    transcriber = OpenAITranscriber(server.url, model="whisper-1", api_key=API_KEY, timeout=5)
    synthesizer = OpenAISynthesizer(server.url, model="tts-1", voice="nova", api_key=API_KEY, timeout=5)
    try:
        with pytest.raises(Unavailable) as transcribing:
            await transcriber.transcribe(Audio(wav_bytes(), "audio/wav"))
        with pytest.raises(Unavailable) as speaking:
            await synthesizer.synthesize("hi")
    finally:
        await transcriber.aclose()
        await synthesizer.aclose()

    assert transcribing.value.message == f"the transcription server failed (HTTP {status})"
    assert speaking.value.message == f"the speech server failed (HTTP {status})"


async def test_a_wrong_key_is_refused(server: AudioServer) -> None:
    transcriber = OpenAITranscriber(server.url, model="whisper-1", api_key="sk-wrong", timeout=5)
    try:
        with pytest.raises(Unavailable, match="HTTP 401"):
            await transcriber.transcribe(Audio(wav_bytes(), "audio/wav"))
    finally:
        await transcriber.aclose()


async def test_an_unreachable_server_is_unavailable() -> None:
    transcriber = OpenAITranscriber(f"http://127.0.0.1:{free_port()}/v1", model="whisper-1", api_key=None, timeout=2)
    try:
        with pytest.raises(Unavailable, match="cannot be reached"):
            await transcriber.transcribe(Audio(wav_bytes(), "audio/wav"))
    finally:
        await transcriber.aclose()


def test_unconfigured_adapters_say_what_to_set() -> None:
    settings = Settings(speech_provider="none")
    transcriber, synthesizer = build_transcriber(settings), build_synthesizer(settings)

    assert isinstance(transcriber, Unconfigured)
    assert isinstance(synthesizer, Unconfigured)
    with pytest.raises(FailedPrecondition, match="CHAT_TRANSCRIPTION_URL"):
        transcriber.require()
    with pytest.raises(FailedPrecondition, match="CHAT_SPEECH_URL"):
        synthesizer.require()


def test_espeak_without_the_program_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    synthesizer = build_synthesizer(Settings(speech_provider="espeak"))

    with pytest.raises(FailedPrecondition, match="espeak-ng program is not installed"):
        synthesizer.require()


def test_configured_urls_pick_the_openai_adapters() -> None:
    settings = Settings(transcription_url="http://127.0.0.1:1/v1", speech_url="http://127.0.0.1:1/v1")

    assert isinstance(build_transcriber(settings), OpenAITranscriber)
    assert isinstance(build_synthesizer(settings), OpenAISynthesizer)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
async def test_espeak_speaks_wav() -> None:
    program = shutil.which("espeak-ng")
    assert program is not None
    synthesizer = EspeakSynthesizer(program, voice="en", timeout=10)

    speech = await synthesizer.synthesize("--help me; $(echo not a command)")

    assert speech.mime_type == "audio/wav"
    assert speech.data[:4] == b"RIFF" and speech.data[8:12] == b"WAVE"
    assert len(speech.data) > 1000
