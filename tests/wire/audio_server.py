"""A server speaking the OpenAI audio endpoints' wire format, as OpenAI, LocalAI and speaches do:

- `POST /v1/audio/transcriptions`: multipart/form-data with `file` (the audio) and `model`; answers
  `{"text": ...}` (response_format json);
- `POST /v1/audio/speech`: JSON `{model, input, voice, response_format}`; answers the audio bytes.

In tests:

    async with AudioServer(transcript="I have to go") as server:
        transcriber = OpenAITranscriber(server.url, model="whisper-1", api_key=None, timeout=5)
        server.uploads[-1].file      # what arrived: file bytes, its name and type, and the form fields
"""

from __future__ import annotations

import email.parser
import email.policy
import io
import wave
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from aiohttp import web

from tests.wire.httpserver import Served, WireServer
from tests.wire.openai_server import authorized, openai_error


def wav_bytes(seconds: float = 0.1, rate: int = 8000) -> bytes:
    """A valid, silent mono 16-bit WAV file."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(b"\x00\x00" * int(seconds * rate))
    return buffer.getvalue()


@dataclass(frozen=True, slots=True)
class Upload:
    """One transcription request as it arrived."""

    file: bytes
    filename: str
    content_type: str
    fields: dict[str, str]


def parse_multipart(content_type: str, body: bytes) -> Upload:
    """Parse a multipart/form-data body with the standard library's MIME parser (aiohttp's reads the request
    stream, which the server has already read to record the request)."""
    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    assert message.is_multipart(), "not a multipart body"
    file, filename, content_type, fields = b"", "", "", {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        if name == "file":
            file, filename, content_type = payload, part.get_filename() or "", part.get_content_type()
        else:
            fields[str(name)] = payload.decode()
    return Upload(file, filename, content_type, fields)


class AudioServer(Served):
    """Transcribes every upload as `transcript`; speaks every input as `speech` (WAV by default). A non-200
    `status` makes both endpoints fail with an OpenAI error body. With `api_key`, other callers get a 401."""

    base_path = "/v1"

    def __init__(
        self, *, transcript: str = "hello there", speech: bytes | None = None, api_key: str | None = None
    ) -> None:
        self.transcript = transcript
        self.speech = speech if speech is not None else wav_bytes()
        self.status = HTTPStatus.OK
        self.uploads: list[Upload] = []
        self.speech_requests: list[dict[str, Any]] = []
        self.http = WireServer(
            [
                web.post("/v1/audio/transcriptions", authorized(api_key, self._transcribe)),
                web.post("/v1/audio/speech", authorized(api_key, self._speak)),
                web.route("*", "/{path:.*}", authorized(api_key, self._unknown)),
            ]
        )

    async def _transcribe(self, request: web.Request) -> web.Response:
        if self.status != HTTPStatus.OK:
            return self._failure()
        self.uploads.append(parse_multipart(request.headers["Content-Type"], await request.read()))
        return web.json_response({"text": self.transcript})

    async def _speak(self, request: web.Request) -> web.Response:
        if self.status != HTTPStatus.OK:
            return self._failure()
        self.speech_requests.append(await request.json())
        return web.Response(body=self.speech, content_type="audio/wav")

    async def _unknown(self, request: web.Request) -> web.Response:
        return openai_error(HTTPStatus.NOT_FOUND, f"Unknown path {request.path}", None)

    def _failure(self) -> web.Response:
        return openai_error(self.status, "The server had an error while processing your request.", None)
