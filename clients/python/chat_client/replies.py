"""A reply stream that survives broken connections: on UNAVAILABLE, a stream a proxy reset (INTERNAL or UNKNOWN
without chat-service's ErrorInfo), or a stream that ends early, it calls ResumeReply from the last offset it
delivered (and the generation of the text it got), so the caller sees every character exactly once, and `text`
always ends equal to the stored reply.

When the replica writing a reply dies, another one continues it from the text that was stored (at most one
flush interval behind what this stream may already have delivered). The server then sends a `rewind` event:
the text from its offset on was never stored and is replaced by the deltas that follow. The stream passes the
event on (a display redraws from there), keeps `text` exact, and records what was taken back in `replaced`.
A reply that could not be continued ends INTERRUPTED the same way: rewound to the stored text, then `completed`.

A reply whose model failed raises ModelUnavailable at once (every reader of it gets that status; resuming
cannot mend it), with `message` set to the reply as stored: FAILED, its text, and the reason."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from chat.v1 import chat_pb2 as pb
from chat_client.errors import ChatError, Internal, ModelUnavailable, Unavailable, from_rpc_error
from chat_client.retry import RetryPolicy, resumable

CLOSING_WAIT = 1.0  # seconds to wait for the status that follows `completed`


@dataclass(frozen=True, slots=True)
class Replaced:
    """Text a stream had delivered from `offset` on, then took back (a `rewind` event)."""

    offset: int
    text: str


class _Broken(Exception):
    """The server closed the stream without the final `completed` event."""


class ReplyStream:
    """Async iterator of `chat.v1.ReplyEvent`: one `started`, deltas whose texts concatenate to the reply
    (each `offset` where its text starts), one `completed`. Resumes on its own after a break. Started by StreamReply,
    RegenerateReply or EditMessage (`method`), or follows a reply by id (ResumeReply)."""

    def __init__(
        self,
        stub: Any,
        *,
        metadata: tuple[tuple[str, str], ...],
        retry: RetryPolicy,
        timeout: float | None,
        request: pb.StreamReplyRequest | pb.RegenerateReplyRequest | pb.EditMessageRequest | None = None,
        method: str = "StreamReply",
        message_id: str = "",
        offset: int = 0,
        on_cancel: Callable[[str], Any] | None = None,
    ) -> None:
        self._stub = stub
        self._metadata = metadata
        self._retry = retry
        self._timeout = timeout
        self._request = request
        self._method = method  # the RPC that starts the reply (its request carries a request_id: a retry attaches)
        self._on_cancel = on_cancel
        self.message_id = message_id
        self.offset = offset
        self.started: pb.ReplyStarted | None = None
        self.message: pb.Message | None = None
        self.resumes = 0
        self._resume_from: int | None = None
        self._parts: list[str] = []
        self._events: AsyncIterator[pb.ReplyEvent] | None = None
        self.generation = 0  # of the last text received: a resume says it, so the server can tell what was stored
        # Text delivered and then replaced: the replica writing it stopped before storing it, and another
        # continued the reply from `offset` (each a `rewind` event the caller also got).
        self.replaced: list[Replaced] = []

    @property
    def text(self) -> str:
        """The reply text delivered so far (from the stream's start offset)."""
        return "".join(self._parts)

    def __aiter__(self) -> AsyncIterator[pb.ReplyEvent]:
        if self._events is None:
            self._events = self._run()
        return self._events

    async def result(self) -> pb.Message:
        """Read the stream to its end and return the assistant message in its final state."""
        async for _ in self:
            pass
        assert self.message is not None
        return self.message

    async def cancel(self) -> None:
        """Ask the server to stop the reply (CancelReply); the stream then ends with status CANCELLED."""
        if self.message_id and self._on_cancel is not None:
            await self._on_cancel(self.message_id)

    async def _run(self) -> AsyncIterator[pb.ReplyEvent]:
        failures = 0
        while True:
            try:
                async for event in self._open():
                    failures = 0
                    delivered = self._accept(event)
                    if delivered is not None:
                        yield delivered
                    if self.message is not None:
                        return
                raise _Broken
            except (grpc.RpcError, _Broken) as error:
                failure = from_rpc_error(error) if isinstance(error, grpc.RpcError) else None
                if isinstance(failure, ModelUnavailable):
                    # The reply itself failed (the model did): every reader of it gets this same status, so
                    # resuming cannot mend it (only a new request can). `message` is the reply as stored: FAILED,
                    # with the text it had and the reason.
                    self.message = self._failed(failure)
                    raise failure from error
                lost_text = failure is not None and failure.code == grpc.StatusCode.OUT_OF_RANGE and self.resumes > 0
                if lost_text and self._resume_from is None:
                    self._resume_from = 0  # we saw text the server lost: replay from 0 for the final state
                    continue
                failures += 1
                if (failure is not None and not resumable(failure)) or self._retry.gives_up(failures):
                    if failure is not None:
                        raise failure from error
                    raise Unavailable("the reply stream ended before the reply did") from None
                self.resumes += 1
                await asyncio.sleep(self._retry.delay(failures))

    def _failed(self, failure: ChatError) -> pb.Message | None:
        if self.started is None:
            return None
        message = pb.Message()
        message.CopyFrom(self.started.assistant_message)
        message.status = pb.MESSAGE_STATUS_FAILED
        message.content = self.text if self.offset == len(self.text) else message.content
        message.error_message = failure.message
        return message

    async def _open(self) -> AsyncIterator[pb.ReplyEvent]:
        if not self.message_id:
            assert self._request is not None, "a stream needs a request or a message id"
            start = getattr(self._stub, self._method)
            call = start(self._request, metadata=self._metadata, timeout=self._timeout)
        else:
            offset = self.offset if self._resume_from is None else self._resume_from
            request = pb.ResumeReplyRequest(message_id=self.message_id, offset=offset, generation=self.generation)
            call = self._stub.ResumeReply(request, metadata=self._metadata, timeout=self._timeout)
        try:
            async for response in call:
                if response.event.HasField("completed"):
                    # The server ends the call right after `completed`: take its status before the caller stops
                    # reading, so the call ends OK rather than cancelled (as the server's access log would say).
                    with contextlib.suppress(grpc.RpcError, asyncio.TimeoutError, AttributeError):
                        await asyncio.wait_for(call.code(), CLOSING_WAIT)
                yield response.event
        finally:
            cancel = getattr(call, "cancel", None)
            if cancel is not None:
                cancel()

    def _accept(self, event: pb.ReplyEvent) -> pb.ReplyEvent | None:
        kind = event.WhichOneof("event")
        if kind == "started":
            if self.started is not None:
                return None  # a resumed stream's header: the caller already has one
            self.started = event.started
            self.message_id = event.started.assistant_message.message_id
            return event
        if kind == "delta":
            return self._delta(event.delta)
        if kind == "rewind":
            return self._rewind(event.rewind)
        if kind == "completed":
            self.message = event.completed.message
            if self.started is None:  # resumed by id: no `started` was delivered, so the caller gets no header
                self.message_id = self.message.message_id
            return event
        raise ChatError(f"unexpected reply event {kind!r}")

    def _delta(self, delta: pb.ReplyDelta) -> pb.ReplyEvent | None:
        end = delta.offset + len(delta.text)
        if end <= self.offset:
            return None  # already delivered before the break
        if delta.offset > self.offset:
            raise Internal(f"the reply stream skipped from offset {self.offset} to {delta.offset}")
        text = delta.text[self.offset - delta.offset :]
        event = pb.ReplyEvent(delta=pb.ReplyDelta(text=text, offset=self.offset, generation=delta.generation))
        self.offset = end
        self.generation = delta.generation or self.generation
        self._parts.append(text)
        return event

    def _rewind(self, rewind: pb.ReplyRewind) -> pb.ReplyEvent | None:
        """Drop what was delivered from `rewind.offset` on: the deltas that follow replace it."""
        if rewind.offset >= self.offset:
            return None  # nothing delivered past it
        text = self.text
        keep = max(rewind.offset - (self.offset - len(text)), 0)
        self.replaced.append(Replaced(rewind.offset, text[keep:]))
        self._parts = [text[:keep]]
        self.offset, self.generation = rewind.offset, rewind.generation
        return pb.ReplyEvent(rewind=pb.ReplyRewind(offset=rewind.offset, generation=rewind.generation))
