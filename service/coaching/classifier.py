"""Asking the model whether an ambiguous turn asks to end the session (the text rules decide the clear ones)."""

from __future__ import annotations

import asyncio
import logging

from service.domain import ChatTurn, Completion, DomainError, Prompt, Role
from service.domain.intent import is_yes
from service.ports import ModelCallObserver, Provider, QuietModelCalls

logger = logging.getLogger(__name__)

QUESTION = (
    "You classify one message from a learner in a coaching session. Does the learner ask to end or leave the "
    "session now? Answer with one word: yes or no."
)


class FinishClassifier:
    def __init__(self, provider: Provider, *, max_tokens: int = 4, observer: ModelCallObserver | None = None) -> None:
        self._provider = provider
        self._max_tokens = max_tokens
        self._observer = observer or QuietModelCalls()

    async def asks_to_finish(self, text: str, model: str) -> bool:
        """The model's verdict; when the model cannot answer, the session simply goes on (False)."""
        prompt = Prompt(model, (ChatTurn(Role.SYSTEM, QUESTION), ChatTurn(Role.USER, text)), self._max_tokens)
        try:
            # A task of its own: the observer makes the model call's span current there, not in the stream's task.
            answer = await asyncio.create_task(self._ask(prompt))
        except DomainError as error:
            logger.warning("could not classify a turn: %s", error.message)
            return False
        return is_yes(answer)

    async def _ask(self, prompt: Prompt) -> str:
        call = self._observer.started(self._provider.name, prompt)
        answer = ""
        try:
            async for piece in self._provider.stream(prompt):
                if isinstance(piece, Completion):
                    call.completed(piece)
                else:
                    if not answer:
                        call.first_token()
                    answer += piece
        except BaseException as error:
            call.failed(error)
            raise
        finally:
            call.end()
        return answer
