"""The HTTP client of the model adapters (`ollama`, `openai`): aiohttp, one connection per reply streaming.

Per token this is the hot path of the service, so it stays lean: bytes are read as they arrive and split into
lines here (one read may hold several lines, a line may span reads), lines are parsed with orjson, and nothing
is built per chunk that a per-call step can do. The pool holds as many connections as the service lets model
streams run at once (`CHAT_LLM_MAX_STREAMS`): the HTTP client is never a silent cap of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from service.domain import DomainError, ModelFailed, ModelUnavailable

logger = logging.getLogger(__name__)

MAX_LINE_BYTES = 16 * 1024 * 1024  # one streamed event; past this the upstream is broken or hostile
END_OF_BODY_SECONDS = 1.0  # after a reply's last line, how long its body's end may take to arrive
TRANSPORT_ERRORS = (aiohttp.ClientError, OSError, TimeoutError)


@dataclass(frozen=True, slots=True)
class Answer:
    """An upstream response: its status, and (for errors) its body read in full."""

    status: int
    body: bytes = b""

    def json(self) -> Any:
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return None


class Upstream:
    """One model server: a base URL, an optional bearer key, timeouts, and a pool of `max_connections`."""

    def __init__(
        self, provider: str, base_url: str, *, timeout: float, max_connections: int, api_key: str | None = None
    ) -> None:
        self.provider = provider
        self._base = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # No total limit (replies stream for minutes); connecting, and every wait for the next bytes, are bounded.
        self._timeout = aiohttp.ClientTimeout(total=None, connect=timeout, sock_read=timeout)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # Made on first use: an aiohttp session belongs to the event loop that runs it.
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, headers=self._headers, json_serialize=_dumps
            )
        return self._session

    @contextlib.asynccontextmanager
    async def stream(self, path: str, body: dict[str, Any]) -> AsyncIterator[tuple[Answer, Lines]]:
        """POST `body` as JSON; yields the answer and its lines (without the newline). The response is released
        on exit: read to its end (see `Lines.finish`), the connection goes back to the pool for the next reply;
        a consumer that stops early closes it rather than leaving it half read."""
        try:
            response = await self._client().post(self._base + path, json=body)
            answer = Answer(200) if response.status == 200 else Answer(response.status, await response.read())
        except TRANSPORT_ERRORS as exc:
            raise self.transport_error(exc, started=False) from exc
        try:
            # Errors while the caller reads the lines are the caller's to translate: only it knows whether
            # text has already been passed on.
            yield answer, Lines(response.content if answer.status == 200 else None)
        finally:
            if response.content.at_eof():
                response.release()  # read to the end: the connection goes back to the pool
            else:
                response.close()  # stopped early: the connection cannot be reused

    async def get(self, path: str) -> Answer:
        try:
            async with self._client().get(self._base + path) as response:
                return Answer(response.status, await response.read())
        except TRANSPORT_ERRORS as exc:
            raise self.transport_error(exc, started=False) from exc

    def transport_error(self, exc: BaseException, *, started: bool) -> DomainError:
        """The domain error for a failed connection: retryable before any text, final after."""
        if started:
            return ModelFailed(f"the connection to the {self.provider} server broke while the reply was streaming")
        if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
            return ModelUnavailable(f"the {self.provider} server did not answer in time")
        logger.warning("%s server unreachable: %s", self.provider, type(exc).__name__)
        return ModelUnavailable(f"the {self.provider} server cannot be reached")

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class Lines:
    """A streamed body's lines, split here as bytes arrive (one read may hold several lines, a line may span
    reads). None: an answer without a body to stream (an error status)."""

    def __init__(self, content: aiohttp.StreamReader | None) -> None:
        self._content = content

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._lines()

    async def _lines(self) -> AsyncIterator[bytes]:
        if self._content is None:
            return
        pending = bytearray()
        while chunk := await self._content.readany():
            pending += chunk
            start = 0
            while (end := pending.find(b"\n", start)) >= 0:
                if end > start:
                    yield bytes(pending[start:end])
                start = end + 1
            del pending[:start]
            if len(pending) > MAX_LINE_BYTES:
                raise ValueError("a streamed line is longer than the service accepts")
        if pending.strip():
            yield bytes(pending)

    async def finish(self) -> None:
        """The reply's last line is read: read the body's end too (normally only the chunked encoding's last
        chunk, already on its way), so that the connection is reused for the next reply instead of closed and
        made again. A server that sends more, or takes longer than END_OF_BODY_SECONDS, has its connection
        closed: the reply itself is complete either way."""
        if self._content is None:
            return
        with contextlib.suppress(TimeoutError, *TRANSPORT_ERRORS):
            async with asyncio.timeout(END_OF_BODY_SECONDS):
                while chunk := await self._content.readany():
                    if chunk.strip():
                        return  # more than the end: not a body to trust with another reply


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()
