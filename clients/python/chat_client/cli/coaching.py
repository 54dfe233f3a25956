"""`chat coach PERSONA` and `/coach`: a coaching session in the terminal over the Coach stream.

The server decides when a session ends. When the coach has used its turns (or its time), it says its closing
words without waiting for the learner, so the terminal does not ask for another line then. A line typed while
the session ended anyway (its time ran out) goes unanswered, and the terminal says so; it is not sent when the
coach has already spoken. The closing words stream as deltas: `session_ended` repeats them as its summary,
shown only when they were not streamed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from chat.v1 import chat_pb2 as pb
from chat_client.cli import failures
from chat_client.cli.terminal import Terminal
from chat_client.errors import Unimplemented
from chat_client.sync import SyncChatClient, SyncCoachSession

PROMPT = "you> "
# By enum name: `chat` must still import with stubs that lack coaching (see chat_client.coaching).
WHY_IT_ENDED = {
    "END_REASON_USER_REQUESTED": "you asked to finish",
    "END_REASON_LIMIT_REACHED": "the session reached its turn or time limit",
    "END_REASON_CLIENT_ENDED": "you ended it",
}
CLOSING_STAGES = ("COACHING_STAGE_WRAPPING_UP", "COACHING_STAGE_ENDED")


def coach(
    client: SyncChatClient, term: Terminal, persona: str, *, read: Callable[[str], str] = input, max_turns: int = 0
) -> int:
    """Run a session until it ends; returns an exit status (0 once it ended). Failures are raised, for the
    caller to report as it reports any other."""
    try:
        session = client.coach(persona, max_turns=max_turns)
    except Unimplemented as error:
        raise Unimplemented(f"coaching is not available from this server ({error.message})") from error
    try:
        return _Coaching(session, term, read).run()
    except BaseException:
        session.cancel()  # leaving early (an error, Ctrl-C): the server keeps the session to rejoin
        raise


def _name(enum: Any, number: int) -> str:
    """The name of an enum value; "" for one newer than these stubs."""
    return str(enum.Name(number)) if number in enum.values() else ""


@dataclass
class _Progress:
    """What the terminal knows of the session: enough to tell whether the coach waits for the learner."""

    max_turns: int = 0
    turns_used: int = 0
    time_left: timedelta | None = None
    closing: bool = False

    def started(self, session: Any) -> None:
        self.max_turns, self.turns_used = session.max_turns, session.turns_used
        self.time_left = session.time_left.ToTimedelta() if session.HasField("time_left") else None
        self.closing = _name(pb.CoachingStage, session.stage) in CLOSING_STAGES

    def turn_completed(self, completed: Any) -> None:
        self.turns_used = completed.turns_used
        self.time_left = completed.time_left.ToTimedelta() if completed.HasField("time_left") else None

    def awaits_learner(self) -> bool:
        """False once a limit is used up: the server then wraps up without reading another turn."""
        out_of_turns = bool(self.max_turns) and self.turns_used >= self.max_turns
        out_of_time = self.time_left is not None and self.time_left <= timedelta(0)
        return not (self.closing or out_of_turns or out_of_time)


class _Coaching:
    def __init__(self, session: SyncCoachSession, term: Terminal, read: Callable[[str], str]) -> None:
        self.session = session
        self.term = term
        self.read = read
        self.progress = _Progress()
        self.streamed = ""  # the text of the reply being streamed
        self.unanswered = False  # the learner's last line has had no answer yet

    def run(self) -> int:
        for response in self.session:
            kind = response.WhichOneof("response")
            if kind == "delta":
                self.streamed += response.delta.text
                self.term.write(response.delta.text)
                continue
            if kind == "session_ended":
                self._ended(response.session_ended)
                return failures.EXIT_OK
            self._show(kind, response)
            # Ask for a line only when the coach waits for one: not once a limit is used up, nor when the coach
            # already spoke again (its time ran out meanwhile).
            if self.progress.awaits_learner() and not self.session.ready():
                self._next_turn()
        self.term.error("the coaching stream ended before the session did")
        return failures.EXIT_ERROR

    def _show(self, kind: str, response: Any) -> None:
        if kind == "session_started":
            started = response.session_started
            self.progress.started(started.session)
            verb = "rejoined" if started.rejoined else "started"
            self.term.note(f"coaching session {verb} with {started.session.persona}; type /end to finish")
        elif kind == "wrap_up_confirmation":
            self.term.line(self.term.style(response.wrap_up_confirmation.prompt, "cyan"))
            self.unanswered = False
        elif kind == "turn_completed":
            self.term.line()
            self.progress.turn_completed(response.turn_completed)
            failures.report_reply(self.term, response.turn_completed.message)
            self.unanswered = False
        self.streamed = ""

    def _ended(self, ended: Any) -> None:
        if not self.streamed:  # e.g. rejoined after they were streamed: the summary is all there is
            self.term.write(ended.summary)
        self.term.line()
        failures.report_reply(self.term, ended.message)
        reason = _name(pb.EndReason, ended.reason)
        why = WHY_IT_ENDED.get(reason, "it is over")
        if self.unanswered and reason == "END_REASON_LIMIT_REACHED":
            why += " (your last line was not answered)"  # the limit passed first: the coach took no more turns
        self.term.note(f"coaching session ended: {why}")
        for _ in self.session:  # session_ended is the last response: read the stream's end, its status
            pass

    def _next_turn(self) -> None:
        text = ""
        while not text:
            try:
                text = self.read(PROMPT).strip()
            except EOFError:
                text = "/end"
        self.unanswered = True
        # The session can end while the learner types (its time runs out): the coach then speaks first, and
        # there is no one to send the line to. (If gRPC does not know yet, the write goes nowhere, harmlessly.)
        if self.session.ready():
            return
        if text == "/end":
            self.session.end()
        else:
            self.session.say(text)
