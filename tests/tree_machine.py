"""A hypothesis state machine over the message tree: sequences of send, regenerate, edit (user messages and
corrections), delete and branch switches, checked against a model of the tree after every step.

It drives one conversation through a `TreeDriver` (the use cases over the fakes, or the RPCs of a real replica on
SQLite and Postgres) and checks:
- the conversation has exactly one current branch: its current message is a leaf of the tree (none when empty), and
  ListMessages shows the path to it, page by page, each message after its parent;
- every listed message's sibling count, index and previous/next sibling are those of the model;
- the model saw, for each reply, exactly the branch it answers (the prompt the provider recorded);
- search covers every branch and says which hits are on the current one.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from service.domain import Completion, Prompt, Role
from tests.fakes import ScriptedProvider

USER, ASSISTANT = "user", "assistant"


class NumberedProvider(ScriptedProvider):
    """Each reply says which call it is ("reply 1", "reply 2", ...), so replies can be told apart; every prompt is
    recorded in `prompts`."""

    async def stream(self, prompt: Prompt) -> AsyncIterator[str | Completion]:
        self.pieces = [f"reply {self.calls + 1}"]
        async for item in super().stream(prompt):
            yield item


@dataclass(frozen=True)
class Listed:
    """A message as ListMessages shows it."""

    id: str
    parent: str
    role: str
    content: str
    sibling_count: int
    sibling_index: int
    previous_sibling: str
    next_sibling: str


@dataclass(frozen=True)
class Made:
    """What a step stored: the new user message (or correction), and the reply it started, if any."""

    message: str
    reply: str = ""
    reply_content: str = ""


class TreeDriver(Protocol):
    """One conversation, driven through the service; `prompts` are the provider's."""

    prompts: list[Prompt]

    async def send(self, text: str) -> Made: ...

    async def regenerate(self, message_id: str) -> Made: ...

    async def edit(self, message_id: str, text: str, *, correction: bool) -> Made:
        """A user message's sibling and its reply; or (`correction`) an assistant message's sibling."""
        ...

    async def switch(self, message_id: str) -> str:
        """The new current message."""
        ...

    async def delete(self, message_id: str) -> tuple[str, int]:
        """The current message after it, and how many messages went."""
        ...

    async def branch(self) -> list[Listed]:
        """The current branch, as ListMessages pages it."""
        ...

    async def current(self) -> str: ...

    async def search(self, word: str) -> dict[str, bool]:
        """Hits by message id: whether each is on the current branch."""
        ...

    async def close(self) -> None: ...


@dataclass
class Node:
    parent: str
    role: str
    content: str


@dataclass
class TreeModel:
    """The tree as it should be. `nodes` keeps creation order (the order of siblings)."""

    nodes: dict[str, Node] = field(default_factory=dict)
    current: str = ""

    def add(self, message_id: str, parent: str, role: str, content: str) -> None:
        assert parent == "" or parent in self.nodes
        self.nodes[message_id] = Node(parent, role, content)

    def path(self, leaf: str) -> list[str]:
        path = []
        while leaf:
            path.append(leaf)
            leaf = self.nodes[leaf].parent
        return path[::-1]

    def family(self, message_id: str) -> list[str]:
        parent = self.nodes[message_id].parent
        return [i for i, node in self.nodes.items() if node.parent == parent]

    def under(self, message_id: str) -> list[str]:
        found = [message_id]
        for i in found:
            found += [j for j, node in self.nodes.items() if node.parent == i]
        return found

    def newest_under(self, message_id: str) -> str:
        below = set(self.under(message_id))
        return [i for i in self.nodes if i in below][-1]

    def delete(self, message_id: str) -> int:
        gone = set(self.under(message_id))
        parent = self.nodes[message_id].parent
        self.nodes = {i: node for i, node in self.nodes.items() if i not in gone}
        if self.current in gone:
            self.current = self.newest_under(parent) if parent else next(reversed(self.nodes), "")
        return len(gone)

    def turns(self, leaf: str) -> list[tuple[str, str]]:
        """What the model sees of the branch ending at `leaf`."""
        return [(self.nodes[i].role, self.nodes[i].content) for i in self.path(leaf)]

    def listed(self) -> list[Listed]:
        rows = []
        for i in self.path(self.current):
            family = self.family(i)
            index = family.index(i)
            before = family[index - 1] if index else ""
            after = family[index + 1] if index + 1 < len(family) else ""
            node = self.nodes[i]
            rows.append(Listed(i, node.parent, node.role, node.content, len(family), index, before, after))
        return rows


def turns_of(prompt: Prompt) -> list[tuple[str, str]]:
    return [(turn.role.value, turn.content) for turn in prompt.turns if turn.role is not Role.SYSTEM]


PICK = st.integers(min_value=0, max_value=10_000)


class TreeMachine(RuleBasedStateMachine):
    """Steps through the driver; `run` runs a coroutine to its end (bounded in time by the caller)."""

    def __init__(self, driver: TreeDriver, run: Callable[[Coroutine[Any, Any, Any]], Any]) -> None:
        super().__init__()
        self.driver = driver
        self.run = run
        self.model = TreeModel()
        self.texts = (f"note {n}" for n in itertools.count(1))
        self.calls = len(driver.prompts)

    def pick(self, index: int) -> str:
        ids = list(self.model.nodes)
        return ids[index % len(ids)]

    def answered(self, made: Made, parent: str) -> None:
        """A reply was made under `parent`: the model saw exactly the branch up to it."""
        assert made.reply
        self.model.add(made.reply, parent, ASSISTANT, made.reply_content)
        self.model.current = made.reply
        assert len(self.driver.prompts) == self.calls + 1
        assert turns_of(self.driver.prompts[-1]) == self.model.turns(parent)
        self.calls += 1

    @rule()
    def send(self) -> None:
        text = next(self.texts)
        made = self.run(self.driver.send(text))
        self.model.add(made.message, self.model.current, USER, text)
        self.answered(made, made.message)

    @precondition(lambda self: self.model.nodes)
    @rule(index=PICK)
    def regenerate(self, index: int) -> None:
        target = self.pick(index)
        node = self.model.nodes[target]
        parent = node.parent if node.role == ASSISTANT else target
        self.answered(self.run(self.driver.regenerate(target)), parent)

    @precondition(lambda self: self.model.nodes)
    @rule(index=PICK)
    def edit(self, index: int) -> None:
        target = self.pick(index)
        node, text = self.model.nodes[target], next(self.texts)
        made = self.run(self.driver.edit(target, text, correction=node.role == ASSISTANT))
        self.model.add(made.message, node.parent, node.role, text)
        if node.role == USER:
            self.answered(made, made.message)
        else:  # a correction: no model call
            assert not made.reply and len(self.driver.prompts) == self.calls
            self.model.current = made.message

    @precondition(lambda self: self.model.nodes)
    @rule(index=PICK)
    def switch(self, index: int) -> None:
        target = self.pick(index)
        self.model.current = self.model.newest_under(target)
        assert self.run(self.driver.switch(target)) == self.model.current

    @precondition(lambda self: self.model.nodes)
    @rule(index=PICK)
    def delete(self, index: int) -> None:
        target = self.pick(index)
        expected = self.model.delete(target)
        assert self.run(self.driver.delete(target)) == (self.model.current, expected)

    @invariant()
    def one_current_branch(self) -> None:
        current = self.run(self.driver.current())
        assert current == self.model.current
        assert all(node.parent != current for node in self.model.nodes.values()) or not current  # a leaf
        assert self.run(self.driver.branch()) == self.model.listed()

    @invariant()
    def search_covers_every_branch(self) -> None:
        on_branch = set(self.model.path(self.model.current))
        replies = {i for i, node in self.model.nodes.items() if node.role == ASSISTANT and "reply" in node.content}
        found = self.run(self.driver.search("reply"))
        assert found == {i: i in on_branch for i in replies}

    def teardown(self) -> None:
        self.run(self.driver.close())
