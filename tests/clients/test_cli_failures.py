"""The CLI's one map from failures to messages and exit statuses (the subprocess tests check it end to end;
these check the cases a test server cannot easily produce, such as chat-service's own database being down)."""

from __future__ import annotations

import pytest

from chat_client import FieldViolation, InvalidArgument, ModelUnavailable, ResourceExhausted, Unavailable
from chat_client.cli import failures
from chat_client.errors import ChatError

ADDRESS = "chat.example:50051"


@pytest.mark.parametrize(
    ("error", "message", "status"),
    [
        # No ErrorInfo: chat-service did not answer.
        (
            Unavailable("failed to connect to all addresses"),
            f"cannot reach chat-service at {ADDRESS} (failed to connect to all addresses)",
            failures.EXIT_UNREACHABLE,
        ),
        # chat-service answered: its database is down. It is not unreachable.
        (
            Unavailable("the database is unavailable; retry shortly", reason="UNAVAILABLE"),
            "UNAVAILABLE: the database is unavailable; retry shortly",
            failures.EXIT_ERROR,
        ),
        (
            ModelUnavailable("the ollama server cannot be reached", reason="MODEL_UNAVAILABLE"),
            "the model provider is unavailable: the ollama server cannot be reached",
            failures.EXIT_MODEL,
        ),
        (
            ModelUnavailable("the model provider failed while generating the reply", reason="MODEL_FAILED"),
            "the model provider is unavailable: the model provider failed while generating the reply",
            failures.EXIT_MODEL,
        ),
    ],
)
def test_unavailable_says_who_is(error: ChatError, message: str, status: int) -> None:
    failure = failures.describe(error, ADDRESS)
    assert failure.message.startswith(message) and failure.status == status


def test_details_and_hints_are_kept() -> None:
    invalid = InvalidArgument("invalid title", violations=(FieldViolation("title", "is too long"),))
    assert failures.describe(invalid, ADDRESS).details == ("  title: is too long",)
    limited = ResourceExhausted("slow down", retry_delay=1.25)
    assert failures.describe(limited, ADDRESS).hint == "try again in 1.2s"
