"""What the CLI says when something fails, and the exit status that goes with it: the one map from errors (and
from replies that did not complete) to messages, used by every command and by the interactive mode."""

from __future__ import annotations

from dataclasses import dataclass

from chat.v1 import chat_pb2 as pb
from chat_client.cli.terminal import Terminal
from chat_client.errors import ChatError, ModelUnavailable, Unauthenticated, Unavailable

# Exit statuses, as the README lists them.
EXIT_OK = 0
EXIT_ERROR = 1  # the server refused or failed the request; the message says why
EXIT_USAGE = 2  # bad flags, settings or files
EXIT_UNREACHABLE = 3  # chat-service cannot be reached
EXIT_AUTH = 4  # no credentials, or the server refused them
EXIT_MODEL = 5  # chat-service is up but its model provider is not, or a reply failed
EXIT_INTERRUPTED = 130  # Ctrl-C


@dataclass(frozen=True)
class Failure:
    message: str
    status: int
    details: tuple[str, ...] = ()
    hint: str = ""


def describe(error: ChatError, address: str) -> Failure:
    if isinstance(error, ModelUnavailable):
        return Failure(f"the model provider is unavailable: {error.message}", EXIT_MODEL)
    if isinstance(error, Unavailable) and not error.reason:
        # No ErrorInfo: chat-service did not answer (a refused connection, a proxy without a backend...).
        # When it answers UNAVAILABLE itself (its database is down), the generic message below says so.
        return Failure(
            f"cannot reach chat-service at {address} ({error.message}). Is it running? "
            "Set --address or CHAT_CLIENT_ADDRESS.",
            EXIT_UNREACHABLE,
        )
    if isinstance(error, Unauthenticated):
        return Failure(
            f"the server refused the credentials ({error.message}). Check --api-key or CHAT_CLIENT_API_KEY.", EXIT_AUTH
        )
    details = tuple(f"  {v.field}: {v.description}" for v in error.violations)
    hint = f"try again in {error.retry_delay:.1f}s" if error.retry_delay is not None else ""
    return Failure(str(error), EXIT_ERROR, details, hint)


_REPLY_ENDINGS = {
    pb.MESSAGE_STATUS_FAILED: ("the reply failed", EXIT_MODEL),  # only the model fails a reply
    pb.MESSAGE_STATUS_INTERRUPTED: ("the reply was interrupted", EXIT_ERROR),
}


def of_reply(message: pb.Message) -> Failure | None:
    """Why a reply ended without completing, or None when it completed or the user cancelled it."""
    what, status = _REPLY_ENDINGS.get(message.status, ("", EXIT_OK))
    if not what:
        return None
    return Failure(f"{what}: {message.error_message}" if message.error_message else what, status)


def show(term: Terminal, failure: Failure) -> int:
    term.error(failure.message)
    for line in failure.details:
        term.error(line)
    if failure.hint:
        term.note(failure.hint)
    return failure.status


def report(term: Terminal, error: ChatError, address: str) -> int:
    """Say what went wrong; returns the exit status for it."""
    return show(term, describe(error, address))


def report_reply(term: Terminal, message: pb.Message) -> int:
    """Say why a reply did not complete, if it did not; returns the exit status for it."""
    failure = of_reply(message)
    if failure is not None:
        return show(term, failure)
    return EXIT_OK if message.status == pb.MESSAGE_STATUS_COMPLETED else EXIT_ERROR
