"""Showing a reply as it streams: spinner until the first token, Ctrl-C cancels the reply (a second one stops
following it), then a status line with the model, tokens/s and time to first token."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

from chat.v1 import chat_pb2 as pb
from chat_client.cli.terminal import Terminal
from chat_client.errors import ChatError, ModelUnavailable
from chat_client.sync import SyncReplyStream

STATUS_NAMES = {
    pb.MESSAGE_STATUS_COMPLETED: "completed",
    pb.MESSAGE_STATUS_STREAMING: "streaming",
    pb.MESSAGE_STATUS_CANCELLED: "cancelled",
    pb.MESSAGE_STATUS_FAILED: "failed",
    pb.MESSAGE_STATUS_INTERRUPTED: "interrupted",
}


@dataclass(frozen=True)
class ReplyStats:
    model: str
    tokens: int
    time_to_first_token: float | None
    tokens_per_second: float | None
    status: str

    def describe(self) -> str:
        parts = [self.model or "?", f"{self.tokens} tokens"]
        if self.tokens_per_second is not None:
            parts.append(f"{self.tokens_per_second:.1f} tok/s")
        if self.time_to_first_token is not None:
            parts.append(f"TTFT {self.time_to_first_token:.2f}s")
        if self.status != "completed":
            parts.append(self.status.upper())
        return " · ".join(parts)


def stats_of(message: pb.Message, text: str, started: float, first: float | None, ended: float) -> ReplyStats:
    tokens = message.usage.completion_tokens or len(text.split())
    rate = tokens / (ended - first) if first is not None and ended > first else None
    return ReplyStats(
        model=message.model,
        tokens=tokens,
        time_to_first_token=first - started if first is not None else None,
        tokens_per_second=rate,
        status=STATUS_NAMES.get(message.status, "unknown"),
    )


def show_reply(term: Terminal, stream: SyncReplyStream, *, echo: bool = True) -> tuple[pb.Message, ReplyStats]:
    """Follow `stream` to its end, writing the text as it arrives (when `echo`)."""
    started = time.monotonic()
    first: float | None = None
    cancel_wanted = cancel_sent = False
    spinner = term.spinner("waiting for the model…").start()
    try:
        while True:
            try:
                for event in stream:
                    if cancel_wanted and not cancel_sent and stream.stream.message_id:
                        cancel_sent = _cancel(stream)
                    kind = event.WhichOneof("event")
                    if kind == "delta":
                        if first is None:
                            first = time.monotonic()
                            spinner.stop()
                        if echo:
                            term.write(event.delta.text)
                    elif kind == "rewind" and echo:
                        # A terminal cannot take text back: say where the reply starts over, then go on.
                        term.line()
                        term.note(
                            f"(the replica writing this reply stopped; continued from character {event.rewind.offset}:)"
                        )
                        term.write(stream.stream.text[-40:] if stream.stream.text else "")
                break
            except ModelUnavailable:
                if stream.stream.message is None:
                    raise  # the model failed before the reply started: the caller's error map says so
                break  # the reply failed: its stored state (FAILED, with the reason) ends it
            except KeyboardInterrupt:
                spinner.stop()
                if cancel_wanted:
                    raise  # a second Ctrl-C: stop following the reply
                cancel_wanted = True
                if stream.stream.message_id:
                    cancel_sent = _cancel(stream)
    finally:
        spinner.stop()
        if echo and stream.stream.text and not stream.stream.text.endswith("\n"):
            term.line()  # also when the stream failed: the error goes on a line of its own
    message = stream.stream.message
    assert message is not None
    return message, stats_of(message, stream.stream.text, started, first, time.monotonic())


def _cancel(stream: SyncReplyStream) -> bool:
    with contextlib.suppress(ChatError):  # it ended meanwhile: the stream's last event says how
        stream.cancel()
    return True
