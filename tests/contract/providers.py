"""What the provider tests share: a prompt, and reading a provider's stream."""

from __future__ import annotations

from service.domain import ChatTurn, Completion, DomainError, Prompt, Role
from service.ports import Provider

TURNS = (
    ChatTurn(Role.SYSTEM, "You are terse."),
    ChatTurn(Role.USER, "Hi"),
    ChatTurn(Role.ASSISTANT, "Hello."),
    ChatTurn(Role.USER, "How are you?"),
)


def prompt(model: str, max_tokens: int = 64) -> Prompt:
    return Prompt(model=model, turns=TURNS, max_tokens=max_tokens)


async def collect(provider: Provider, request: Prompt) -> list[str | Completion]:
    return [item async for item in provider.stream(request)]


async def pieces_before_error(provider: Provider, request: Prompt) -> tuple[list[str | Completion], DomainError]:
    """What the stream yielded before it raised, and what it raised."""
    pieces: list[str | Completion] = []
    try:
        async for item in provider.stream(request):
            pieces.append(item)
    except DomainError as exc:
        return pieces, exc
    raise AssertionError("the stream ended without an error")
