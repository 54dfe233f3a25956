"""A hostile model: a server speaking Ollama's wire format that emits anything a model can — NUL, lone and
split surrogates, 5 MB of text, a line that is not JSON, a broken connection, a stall forever — in front of the
whole service, on both databases.

Whatever it emits, every stream ends (a `completed` event or a non-OK status, within a bound), the stored row is
final, and what was streamed is what is stored: COMPLETED with exactly the text received, or FAILED with a
reason and the partial text received. The conversation stays usable afterwards (finding F5: a huge reply used
to brick it, and the replica with it).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from chat.v1 import chat_pb2 as pb
from service.replies.text import clean
from tests.integration.harness import Replica, running_replica, settings_for
from tests.wire.ollama_server import ChatScript, OllamaServer

pytestmark = pytest.mark.timeout(300)

TERMINAL_WITHIN = 20.0  # seconds: a stream that has not ended by then is a hang
MAX_REPLY_CHARS = 100_000
# Any code point a JSON `\u` escape can carry, NUL and surrogates included.
MODEL_TEXT = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=30)
ENDINGS = ("done", "error", "garbage", "drop", "end", "stall")


@dataclass(frozen=True)
class Outcome:
    text: str
    completed: pb.Message | None
    error: grpc.aio.AioRpcError | None


@pytest.fixture
async def setup(database_url: str) -> AsyncIterator[tuple[Replica, OllamaServer]]:
    async with OllamaServer() as ollama:
        settings = settings_for(
            database_url,
            llm_provider="ollama",
            llm_url=ollama.url,
            default_model="llama3.2",
            llm_timeout_seconds=1.0,  # a stalled model fails the reply after this long without a byte
            llm_retry_attempts=1,
            max_reply_tokens=100_000,
        )
        async with running_replica(settings) as replica:
            yield replica, ollama


def script(pieces: list[str], ending: str) -> ChatScript:
    at = len(pieces)
    return ChatScript(
        pieces=pieces,
        error_after=at if ending == "error" else None,
        garbage_after=at if ending == "garbage" else None,
        drop_after=at if ending == "drop" else None,
        end_after=at if ending == "end" else None,
        stall_after=at if ending == "stall" else None,
    )


async def reply(replica: Replica, conversation_id: str, content: str) -> Outcome:
    call = replica.stub.StreamReply(
        pb.StreamReplyRequest(conversation_id=conversation_id, content=content), metadata=await replica.auth("alice")
    )
    text, completed = "", None
    async with asyncio.timeout(TERMINAL_WITHIN):
        try:
            async for response in call:
                event = response.event
                text += event.delta.text
                if event.HasField("completed"):
                    completed = event.completed.message
        except grpc.aio.AioRpcError as error:
            return Outcome(text, None, error)
    return Outcome(text, completed, None)


async def stored(replica: Replica, message_id: str) -> pb.Message:
    call = replica.stub.ResumeReply(pb.ResumeReplyRequest(message_id=message_id), metadata=await replica.auth("alice"))
    return (await call.read()).event.started.assistant_message


async def one_hostile_reply(replica: Replica, ollama: OllamaServer, pieces: list[str], ending: str) -> None:
    conversation = await replica.conversation("alice")
    ollama.enqueue(script(pieces, ending))
    outcome = await reply(replica, conversation.conversation_id, "say anything")

    if outcome.completed is None:
        assert outcome.error is not None, "the stream ended without `completed` and without an error"
        assert outcome.error.code() == grpc.StatusCode.UNAVAILABLE, (outcome.error.code(), outcome.error.details())
    listed = await replica.stub.ListMessages(
        pb.ListMessagesRequest(conversation_id=conversation.conversation_id), metadata=await replica.auth("alice")
    )
    message = await stored(replica, listed.messages[-1].message_id)
    assert message.content == outcome.text  # what was streamed is what is stored, byte for byte
    message.content.encode("utf-8")  # storable and sendable
    expected = clean("".join(pieces))[:MAX_REPLY_CHARS]
    if outcome.completed is not None:
        assert message.status == pb.MESSAGE_STATUS_COMPLETED
        assert outcome.completed == message
        assert ending == "done" or len(expected) == MAX_REPLY_CHARS
        assert outcome.text == expected
    else:
        assert message.status == pb.MESSAGE_STATUS_FAILED and message.error_message
        assert expected.startswith(outcome.text)
    # The conversation is not bricked: the next reply in it works.
    ollama.enqueue(ChatScript(pieces=["fine"]))
    after = await reply(replica, conversation.conversation_id, "and now?")
    assert after.completed is not None and after.completed.content == "fine", after.error


async def test_whatever_the_model_emits_the_stream_ends_and_the_stored_row_agrees(
    setup: tuple[Replica, OllamaServer],
) -> None:
    replica, ollama = setup
    loop = asyncio.get_running_loop()  # hypothesis drives examples from a thread; each runs on this loop

    @settings(max_examples=30, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(pieces=st.lists(MODEL_TEXT, max_size=6), ending=st.sampled_from(ENDINGS))
    @example(pieces=["nul\x00 here"], ending="done")
    @example(pieces=["smile ", "\ud83d", "\ude00"], ending="done")  # an emoji split across two NDJSON lines
    @example(pieces=["lone \udc00", "\ud800"], ending="done")
    @example(pieces=["x" * 5_000_000], ending="done")  # 5 MB: cut at the limit
    @example(pieces=["x" * 60_000, "y" * 60_000], ending="stall")
    @example(pieces=["partial"], ending="garbage")
    @example(pieces=["partial"], ending="stall")
    def check(pieces: list[str], ending: str) -> None:
        work = one_hostile_reply(replica, ollama, pieces, ending)
        try:
            asyncio.run_coroutine_threadsafe(work, loop).result(timeout=TERMINAL_WITHIN * 3)
        except grpc.aio.AioRpcError as error:  # report it as text: grpc objects stay on their own loop
            raise AssertionError(f"{error.code()}: {error.details()}") from None

    await asyncio.to_thread(check)


async def test_a_huge_reply_does_not_stop_the_replica_from_starting_again(database_url: str) -> None:
    """F5: after a 1 MB+ reply the final write failed forever, every sweep failed, and a restarted replica
    could not start. Cut at the limit, it is stored; sweeps and restarts go on."""
    async with OllamaServer() as ollama:
        settings = settings_for(
            database_url, llm_provider="ollama", llm_url=ollama.url, default_model="llama3.2", max_reply_tokens=10**6
        )
        async with running_replica(settings) as replica:
            conversation = await replica.conversation("alice")
            ollama.enqueue(ChatScript(pieces=["word " * 50_000] * 30))  # 7.5 MB of words
            outcome = await reply(replica, conversation.conversation_id, "write a lot")
            assert outcome.completed is not None
            assert len(outcome.completed.content) == MAX_REPLY_CHARS
            assert outcome.completed.finish_reason == pb.FINISH_REASON_LENGTH
            await replica.app.deps.use_cases.replies.generations.tick(sweep=True)
            hits = await replica.stub.SearchMessages(
                pb.SearchMessagesRequest(query="word"), metadata=await replica.auth("alice")
            )
            assert hits.results
        async with running_replica(settings) as again:  # starts: its start-up sweep is not refused
            listed = await again.stub.ListMessages(
                pb.ListMessagesRequest(conversation_id=conversation.conversation_id),
                metadata=await again.auth("alice"),
            )
            assert [m.status for m in listed.messages] == [pb.MESSAGE_STATUS_COMPLETED] * 2
