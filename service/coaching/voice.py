"""Audio in and out of a coaching session: spoken turns become text, replies may become speech."""

from __future__ import annotations

from service.coaching.events import UserTurn
from service.domain import InvalidArgument, check_text
from service.ports import Audio, Synthesizer, Transcriber

AUDIO_TYPES = frozenset({"audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave", "audio/ogg", "audio/opus"})


class Voice:
    def __init__(
        self, transcriber: Transcriber, synthesizer: Synthesizer, *, max_audio_bytes: int, max_message_bytes: int
    ) -> None:
        self._transcriber = transcriber
        self._synthesizer = synthesizer
        self._max_audio_bytes = max_audio_bytes
        self._max_message_bytes = max_message_bytes

    async def text(self, turn: UserTurn) -> str:
        """What the learner said: the typed text, or the transcript of the audio (checked before upload)."""
        if turn.audio is None:
            return check_text("user_turn.text", turn.text, max_bytes=self._max_message_bytes, required=True)
        self._transcriber.require()
        self._check(turn.audio)
        text = await self._transcriber.transcribe(turn.audio)
        if not text.strip():
            raise InvalidArgument.field("user_turn.audio", "no speech was recognised")
        return check_text("user_turn.audio", text, max_bytes=self._max_message_bytes, required=True)

    def require_speech(self) -> None:
        self._synthesizer.require()

    async def speech(self, text: str) -> Audio | None:
        return await self._synthesizer.synthesize(text) if text.strip() else None

    def _check(self, audio: Audio) -> None:
        media_type = audio.mime_type.split(";")[0].strip().lower()
        if media_type not in AUDIO_TYPES:
            raise InvalidArgument.field("user_turn.audio.mime_type", "must be a WAV or OGG type (audio/wav, audio/ogg)")
        if not audio.data:
            raise InvalidArgument.field("user_turn.audio.data", "must not be empty")
        if len(audio.data) > self._max_audio_bytes:
            raise InvalidArgument.field(
                "user_turn.audio.data", f"is {len(audio.data)} bytes; the limit is {self._max_audio_bytes}"
            )
