"""Speech through an OpenAI-compatible server (OpenAI, vLLM, LocalAI, speaches, ...) over httpx:
`POST {base}/audio/transcriptions` (multipart) and `POST {base}/audio/speech` (JSON in, audio bytes out)."""

from __future__ import annotations

import logging

import httpx

from service.domain import Unavailable
from service.ports import Audio

logger = logging.getLogger(__name__)

_EXTENSIONS = {"audio/wav": "wav", "audio/ogg": "ogg", "audio/mpeg": "mp3", "audio/webm": "webm", "audio/flac": "flac"}


def _client(base_url: str, api_key: str | None, timeout: float) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    # The trailing slash makes httpx append relative paths to the base path (`/v1/` + `audio/speech`).
    return httpx.AsyncClient(base_url=base_url.rstrip("/") + "/", headers=headers, timeout=httpx.Timeout(timeout))


def _failure(what: str, response: httpx.Response | None, error: httpx.HTTPError | None = None) -> Unavailable:
    """The caller learns which service failed; the upstream's own words stay in our log."""
    if response is not None:
        logger.warning("%s server answered HTTP %d: %.200s", what, response.status_code, response.text)
        return Unavailable(f"the {what} server failed (HTTP {response.status_code})")
    logger.warning("%s server unreachable: %s", what, type(error).__name__)
    return Unavailable(f"the {what} server cannot be reached")


class OpenAITranscriber:
    """Implements `ports.Transcriber`."""

    def __init__(self, base_url: str, *, model: str, api_key: str | None, timeout: float) -> None:
        self._client = _client(base_url, api_key, timeout)
        self._model = model

    def require(self) -> None:
        return None

    async def transcribe(self, audio: Audio) -> str:
        media_type = audio.mime_type.split(";")[0].strip()
        name = f"speech.{_EXTENSIONS.get(media_type, 'wav')}"
        try:
            response = await self._client.post(
                "audio/transcriptions",
                files={"file": (name, audio.data, audio.mime_type)},
                data={"model": self._model, "response_format": "json"},
            )
        except httpx.HTTPError as error:
            raise _failure("transcription", None, error) from error
        if response.status_code != httpx.codes.OK:
            raise _failure("transcription", response)
        try:
            text = response.json()["text"]
        except (ValueError, KeyError, TypeError) as error:
            raise Unavailable("the transcription server sent a malformed answer") from error
        return str(text).strip()

    async def aclose(self) -> None:
        await self._client.aclose()


class OpenAISynthesizer:
    """Implements `ports.Synthesizer`; asks for WAV."""

    def __init__(self, base_url: str, *, model: str, voice: str, api_key: str | None, timeout: float) -> None:
        self._client = _client(base_url, api_key, timeout)
        self._model = model
        self._voice = voice

    def require(self) -> None:
        return None

    async def synthesize(self, text: str) -> Audio:
        body = {"model": self._model, "input": text, "voice": self._voice, "response_format": "wav"}
        try:
            response = await self._client.post("audio/speech", json=body)
        except httpx.HTTPError as error:
            raise _failure("speech", None, error) from error
        if response.status_code != httpx.codes.OK or not response.content:
            raise _failure("speech", response)
        mime_type = response.headers.get("content-type", "audio/wav").split(";")[0].strip()
        return Audio(response.content, mime_type if mime_type.startswith("audio/") else "audio/wav")

    async def aclose(self) -> None:
        await self._client.aclose()
