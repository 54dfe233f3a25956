"""`chat coach` and `/coach` against a real server (fake model): the session ends on the server's word, its
closing words are shown once, and nothing is sent on a stream the server has finished."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chat.v1 import chat_pb2 as pb
from chat_client import ChatClient
from tests.clients.conftest import COACH, FinishedRpcs, proxy_to
from tests.clients.terminal import TerminalSession, chat_env, run_chat
from tests.integration.harness import Replica, running_replica, settings_for

PROMPT = "you> "
LIMIT = "the session reached its turn or time limit"
ENDED_BY_CLIENT = "you ended it"


@pytest.fixture
async def limited_server(sqlite_url: str) -> AsyncIterator[Replica]:
    """Coaching sessions end after two learner turns unless the client asks for another limit."""
    async with running_replica(settings_for(sqlite_url, coach_max_turns=2)) as running:
        yield running


@pytest.fixture
async def brief_server(sqlite_url: str) -> AsyncIterator[Replica]:
    """Coaching sessions end one second after they start (a learner who says nothing is wrapped up)."""
    async with running_replica(settings_for(sqlite_url, coach_max_duration_seconds=1.0)) as running:
        yield running


async def coaching_messages(replica: Replica, user: str = "alice") -> list[pb.Message]:
    """The messages of the user's only conversation: the coaching session's."""
    async with ChatClient(replica.address, api_key=await replica.key(user)) as client:
        (conversation,) = [c async for c in client.iter_conversations()]
        return [m async for m in client.iter_messages(conversation.conversation_id)]


def closing_words(messages: list[pb.Message]) -> str:
    closing = messages[-1]
    assert closing.role == pb.ROLE_ASSISTANT and closing.status == pb.MESSAGE_STATUS_COMPLETED
    assert closing.content
    return closing.content


def transcript(messages: list[pb.Message]) -> str:
    """What `chat coach` writes to stdout for these messages: a prompt for each line the learner typed, each
    reply (the closing words included) once."""
    return "".join(PROMPT if m.role == pb.ROLE_USER else m.content + "\n" for m in messages)


@pytest.mark.parametrize(
    ("args", "lines", "said", "reason"),
    [
        # The limit is reached by the second turn: the third line is never asked for, never sent.
        (["--max-turns", "2"], ["Hi, I goed to school.", "I like cats.", "too late"], 2, LIMIT),
        # The learner asks to finish and confirms: the coach's closing words follow.
        ([], ["Hi, I goed to school.", "I want to finish", "yes", "unused"], 3, "you asked to finish"),
    ],
)
async def test_coach_ends_with_the_closing_words_once(
    server: Replica, tmp_path: Path, args: list[str], lines: list[str], said: int, reason: str
) -> None:
    env = chat_env(server.address, await server.key("alice"), tmp_path)
    stdin = "".join(line + "\n" for line in lines)
    code, out, err = await run_chat("coach", "english_buddy", *args, env=env, stdin=stdin, limit=30)
    assert code == 0, err
    stored = await coaching_messages(server)
    assert [m.content for m in stored if m.role == pb.ROLE_USER] == lines[:said]
    closing_words(stored)
    assert out == transcript(stored)
    assert f"coaching session ended: {reason}" in err and "error" not in err


async def test_turn_limit_on_a_terminal_leaves_without_another_prompt(server: Replica, tmp_path: Path) -> None:
    session = await TerminalSession.start(
        "coach", "english_buddy", "--max-turns", "2", env=chat_env(server.address, await server.key("alice"), tmp_path)
    )
    try:
        await session.expect("you> ")
        session.send("Hi, I goed to school.\n")
        await session.expect("you> ")
        session.send("I like cats.\n")
        assert await session.wait(limit=20) == 0
    finally:
        await session.close()
    stored = await coaching_messages(server)
    second_reply, closing = stored[-2].content, closing_words(stored)
    after_second_turn = session.screen.split("I like cats.", 1)[1]
    assert after_second_turn == f"\n{second_reply}\n{closing}\ncoaching session ended: {LIMIT}\n"


async def test_interactive_coach_ends_back_at_the_chat_prompt(limited_server: Replica, tmp_path: Path) -> None:
    env = chat_env(limited_server.address, await limited_server.key("alice"), tmp_path)
    session = await TerminalSession.start(env=env)
    try:
        await session.expect("you> ")
        session.send("/coach english_buddy\n")
        await session.expect("coaching session started")
        await session.expect("you> ")
        session.send("Hi, I goed to school.\n")
        await session.expect("you> ")
        session.send("I like cats.\n")
        ending = await session.expect("coaching session ended")
        await session.expect("you> ")
        session.send("/help\n")  # the chat's own prompt answers
        await session.expect("/coach PERSONA")
        session.send("/quit\n")
        assert await session.wait() == 0
    finally:
        await session.close()
    stored = await coaching_messages(limited_server)
    assert ending == f"I like cats.\n{stored[-2].content}\n{closing_words(stored)}\ncoaching session ended"
    assert "error" not in session.screen


async def test_a_line_typed_after_the_session_ended_goes_unanswered(
    brief_server: Replica, tmp_path: Path, finished_rpcs: FinishedRpcs
) -> None:
    env = chat_env(brief_server.address, await brief_server.key("alice"), tmp_path)
    session = await TerminalSession.start("coach", "english_buddy", env=env)
    try:
        await session.expect("you> ")
        await finished_rpcs.wait(COACH)  # the time ran out: the server wrapped up and finished the stream
        session.send("Sorry, I was away.\n")
        assert await session.wait(limit=20) == 0
    finally:
        await session.close()
    stored = await coaching_messages(brief_server)
    assert [m.role for m in stored] == [pb.ROLE_ASSISTANT]  # only the closing words: the late line was not sent
    late = session.screen.split("Sorry, I was away.", 1)[1]
    assert late == f"\n{closing_words(stored)}\ncoaching session ended: {LIMIT} (your last line was not answered)\n"
    assert "error" not in session.screen


async def test_coach_over_a_slow_network(server: Replica, tmp_path: Path) -> None:
    async with proxy_to(server.address, latency=0.3) as (_, address):
        env = chat_env(address, await server.key("alice"), tmp_path)
        code, _, err = await run_chat("coach", "english_buddy", env=env, stdin="Hi, I goed to school.\n/end\n")
    assert code == 0, err
    assert f"coaching session ended: {ENDED_BY_CLIENT}" in err
