"""`chat coach PERSONA` and `/coach`: a coaching session in the terminal over the Coach stream."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from chat_client.cli.terminal import Terminal
from chat_client.errors import FailedPrecondition, Unimplemented
from chat_client.sync import SyncChatClient

UNAVAILABLE_HINT = "coaching is not available from this server"


def coach(
    client: SyncChatClient, term: Terminal, persona: str, *, read: Callable[[str], str] = input, max_turns: int = 0
) -> int:
    """Run a session until it ends; returns an exit status (0 when it ended, 1 when coaching is unavailable)."""
    try:
        session = client.coach(persona, max_turns=max_turns)
        return _run(session, term, read)
    except Unimplemented as error:
        term.error(f"{UNAVAILABLE_HINT} ({error.code.name}: {error.message})")
    except FailedPrecondition as error:
        term.error(f"cannot coach: {error.message}")
    return 1


def _run(session: Any, term: Terminal, read: Callable[[str], str]) -> int:
    for response in session:
        kind = response.WhichOneof("response")
        if kind == "session_started":
            started = response.session_started
            verb = "rejoined" if started.rejoined else "started"
            term.note(f"coaching session {verb} with {started.session.persona}; type /end to finish")
        elif kind == "delta":
            term.write(response.delta.text)
            continue
        elif kind == "wrap_up_confirmation":
            term.line(term.style(response.wrap_up_confirmation.prompt, "cyan"))
        elif kind == "session_ended":
            ended = response.session_ended
            term.line()
            term.line(ended.summary)
            return 0
        else:  # turn_completed
            term.line()
        _next_turn(session, read)
    return 0


def _next_turn(session: Any, read: Callable[[str], str]) -> None:
    text = ""
    while not text:
        try:
            text = read("you> ").strip()
        except EOFError:
            text = "/end"
    if text == "/end":
        session.end()
    else:
        session.say(text)
