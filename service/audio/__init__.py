"""Speech adapters behind `ports.Transcriber` and `ports.Synthesizer`, and the factory that picks them.

- `openai.py`: any OpenAI-compatible server (`/audio/transcriptions`, `/audio/speech`), over httpx;
- `espeak.py`: local speech with the espeak-ng program, when it is installed;
- `Unconfigured`: what the service uses without either; it refuses with FAILED_PRECONDITION naming the setting.
"""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

from service.domain import FailedPrecondition
from service.ports import Audio

if TYPE_CHECKING:
    from service.ports import Synthesizer, Transcriber
    from service.settings import Settings

NO_TRANSCRIBER = "no speech transcriber is configured: set CHAT_TRANSCRIPTION_URL to an OpenAI-compatible server"
NO_SYNTHESIZER = (
    "no speech synthesizer is configured: set CHAT_SPEECH_URL to an OpenAI-compatible server, "
    "or install espeak-ng and set CHAT_SPEECH_PROVIDER=espeak (or auto)"
)


class Unconfigured:
    """Implements both ports by refusing: `message` says what to configure."""

    def __init__(self, message: str) -> None:
        self._message = message

    def require(self) -> None:
        raise FailedPrecondition(self._message)

    async def transcribe(self, audio: Audio) -> str:
        raise FailedPrecondition(self._message)

    async def synthesize(self, text: str) -> Audio:
        raise FailedPrecondition(self._message)

    async def aclose(self) -> None:
        return None


def _api_key(settings: Settings) -> str | None:
    return settings.audio_api_key.get_secret_value() if settings.audio_api_key else None


def build_transcriber(settings: Settings) -> Transcriber:
    if not settings.transcription_url:
        return Unconfigured(NO_TRANSCRIBER)
    from service.audio.openai import OpenAITranscriber

    return OpenAITranscriber(
        settings.transcription_url,
        model=settings.transcription_model,
        api_key=_api_key(settings),
        timeout=settings.audio_timeout_seconds,
    )


def build_synthesizer(settings: Settings) -> Synthesizer:
    """`openai` needs CHAT_SPEECH_URL; `espeak` needs the espeak-ng program; `auto` takes the first that
    is there; `none` never speaks."""
    choice = settings.speech_provider
    if choice in ("openai", "auto") and settings.speech_url:
        from service.audio.openai import OpenAISynthesizer

        return OpenAISynthesizer(
            settings.speech_url,
            model=settings.speech_model,
            voice=settings.speech_voice or "alloy",
            api_key=_api_key(settings),
            timeout=settings.audio_timeout_seconds,
        )
    program = shutil.which("espeak-ng")
    if choice in ("espeak", "auto") and program:
        from service.audio.espeak import EspeakSynthesizer

        return EspeakSynthesizer(program, voice=settings.speech_voice or "en", timeout=settings.audio_timeout_seconds)
    if choice == "espeak":
        return Unconfigured("CHAT_SPEECH_PROVIDER=espeak, but the espeak-ng program is not installed")
    if choice == "openai":
        return Unconfigured("CHAT_SPEECH_PROVIDER=openai needs CHAT_SPEECH_URL")
    return Unconfigured(NO_SYNTHESIZER)
