"""Why the process cannot start, said once: the CLI reports a `CannotStart` as one log line and exits 1."""

from __future__ import annotations


class CannotStart(Exception):
    """Something outside the code is not as the service needs it (the database, the listen port, ...).

    `problem` says what is wrong, `hint` what to do about it; both are for an operator reading the log."""

    def __init__(self, problem: str, hint: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.hint = hint
