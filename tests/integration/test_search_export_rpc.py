"""SearchMessages and ExportConversation over a real server, on SQLite and Postgres."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import uuid
from datetime import UTC, datetime

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chat.v1 import chat_pb2 as pb
from tests.integration.harness import Replica
from tests.integration.rpc_errors import violations


async def _say(replica: Replica, user: str, conversation_id: str, text: str) -> pb.SendMessageResponse:
    request = pb.SendMessageRequest(conversation_id=conversation_id, content=text, request_id=str(uuid.uuid4()))
    return await replica.stub.SendMessage(request, metadata=await replica.auth(user))


async def _search(replica: Replica, user: str, query: str, **kwargs: object) -> pb.SearchMessagesResponse:
    request = pb.SearchMessagesRequest(query=query, **kwargs)  # type: ignore[arg-type]
    return await replica.stub.SearchMessages(request, metadata=await replica.auth(user))


async def _export(replica: Replica, user: str, conversation_id: str, fmt: int, **kwargs: object) -> tuple[str, str]:
    request = pb.ExportConversationRequest(conversation_id=conversation_id, format=fmt, **kwargs)  # type: ignore[arg-type]
    chunks = [c async for c in replica.stub.ExportConversation(request, metadata=await replica.auth(user))]
    return b"".join(c.data for c in chunks).decode(), chunks[0].content_type if chunks else ""


async def test_search_ranks_best_match_first_with_snippets(replica: Replica) -> None:
    zoo = await replica.conversation("alice", title="Zoo")
    farm = await replica.conversation("alice", title="Farm")
    await _say(replica, "alice", zoo.conversation_id, "Once a zebra crossed the wide river near the old bridge")
    striped = await _say(replica, "alice", farm.conversation_id, "zebra zebra zebra: stripes of a zebra")
    await _say(replica, "alice", farm.conversation_id, "nothing to see here")

    found = await _search(replica, "alice", "Zebras?")
    assert [r.message.conversation_id for r in found.results] == [farm.conversation_id, zoo.conversation_id]
    best = found.results[0]
    assert best.message.message_id == striped.user_message.message_id
    assert best.message.content == "zebra zebra zebra: stripes of a zebra"
    assert best.conversation_title == "Farm"
    assert "**zebra**" in best.snippet
    assert best.score > found.results[1].score
    assert found.next_page_token == ""

    every_word = await _search(replica, "alice", "zebra bridge")
    assert [r.message.conversation_id for r in every_word.results] == [zoo.conversation_id]


async def test_search_shows_only_the_callers_messages(replica: Replica) -> None:
    mine = await replica.conversation("alice")
    theirs = await replica.conversation("bob")
    await _say(replica, "alice", mine.conversation_id, "my secret platypus")
    await _say(replica, "bob", theirs.conversation_id, "bob's platypus notes")

    alice = await _search(replica, "alice", "platypus")
    bob = await _search(replica, "bob", "platypus")
    assert [r.message.content for r in alice.results] == ["my secret platypus"]
    assert [r.message.content for r in bob.results] == ["bob's platypus notes"]
    assert (await _search(replica, "carol", "platypus")).results == []


async def test_search_pages_through_every_match_once(replica: Replica) -> None:
    conversation = await replica.conversation("alice")
    sent = []
    for i in range(5):
        response = await _say(replica, "alice", conversation.conversation_id, "quokka " * (i + 1) + f"number {i}")
        sent.append(response.user_message.message_id)

    seen: list[pb.SearchResult] = []
    token = ""
    for _ in range(10):
        page = await _search(replica, "alice", "quokka", page_size=2, page_token=token)
        assert len(page.results) <= 2
        seen.extend(page.results)
        token = page.next_page_token
        if not token:
            break
    assert sorted(r.message.message_id for r in seen) == sorted(sent)
    scores = [r.score for r in seen]
    assert scores == sorted(scores, reverse=True)
    assert seen[0].message.content.startswith("quokka quokka quokka quokka quokka")

    first = await _search(replica, "alice", "quokka", page_size=2)
    with pytest.raises(grpc.aio.AioRpcError) as other_query:
        await _search(replica, "alice", "number", page_size=2, page_token=first.next_page_token)
    assert other_query.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in violations(other_query.value)


@pytest.mark.parametrize("query", ["", "  !!! ?? ", "x" * 501])
async def test_search_rejects_queries_without_words(replica: Replica, query: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await _search(replica, "alice", query)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "query" in violations(bad.value)


async def test_a_reply_is_searchable_once_final_not_while_streaming(slow_replica: Replica) -> None:
    replica = slow_replica
    auth = await replica.auth("dora")
    conversation = await replica.conversation("dora")
    sent = await replica.stub.SendMessage(
        pb.SendMessageRequest(conversation_id=conversation.conversation_id, content="qwxyz", background=True),
        metadata=auth,
    )
    reply_id = sent.message.message_id
    partial = ""
    for _ in range(200):  # until a flush has stored some text of the reply in flight (bounded)
        listed = await replica.stub.ListMessages(
            pb.ListMessagesRequest(conversation_id=conversation.conversation_id), metadata=auth
        )
        reply = listed.messages[-1]
        assert reply.status == pb.MESSAGE_STATUS_STREAMING, "the reply ended before a flush was seen"
        if reply.content.strip():
            partial = reply.content
            break
        await asyncio.sleep(0.02)
    word = next(w.strip(",.;") for w in partial.split() if w.strip(",.;").isalpha())
    assert (await _search(replica, "dora", word)).results == []

    events = replica.stub.ResumeReply(pb.ResumeReplyRequest(message_id=reply_id), metadata=auth)
    final = [e async for e in events][-1].event.completed.message
    assert final.status == pb.MESSAGE_STATUS_COMPLETED
    found = await _search(replica, "dora", word)
    assert [r.message.message_id for r in found.results] == [reply_id]


TRICKY = 'She said "hi, there"\nthen left; 50% off, naïve café 🙂'


async def test_export_csv_is_rfc4180_and_parses_back(replica: Replica) -> None:
    conversation = await replica.conversation("alice", title="Tasks")
    await _say(replica, "alice", conversation.conversation_id, TRICKY)
    await _say(replica, "alice", conversation.conversation_id, "second, task")
    listed = await replica.stub.ListMessages(
        pb.ListMessagesRequest(conversation_id=conversation.conversation_id), metadata=await replica.auth("alice")
    )

    text, media = await _export(replica, "alice", conversation.conversation_id, pb.EXPORT_FORMAT_CSV)
    assert media == "text/csv"
    assert text.startswith("index,role,content,time\r\n")
    assert '"She said ""hi, there""\nthen left; 50% off, naïve café 🙂"' in text
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[0] == ["index", "role", "content", "time"]
    assert [r[0] for r in rows[1:]] == ["1", "2", "3", "4"]
    assert [r[1] for r in rows[1:]] == ["user", "assistant", "user", "assistant"]
    assert [r[2] for r in rows[1:]] == [m.content for m in listed.messages]
    stamp = datetime.fromisoformat(rows[1][3])
    assert stamp == listed.messages[0].create_time.ToDatetime(tzinfo=UTC)

    more, _ = await _export(
        replica, "alice", conversation.conversation_id, pb.EXPORT_FORMAT_CSV, first_index=5, omit_header=True
    )
    continued = list(csv.reader(io.StringIO(more, newline="")))
    assert [r[0] for r in continued] == ["5", "6", "7", "8"]


async def test_export_json_holds_every_field(replica: Replica) -> None:
    conversation = await replica.conversation("alice", title="Json")
    await _say(replica, "alice", conversation.conversation_id, TRICKY)
    listed = await replica.stub.ListMessages(
        pb.ListMessagesRequest(conversation_id=conversation.conversation_id), metadata=await replica.auth("alice")
    )
    text, media = await _export(replica, "alice", conversation.conversation_id, pb.EXPORT_FORMAT_JSON)
    assert media == "application/json"
    document = json.loads(text)
    assert document["conversation"]["title"] == "Json"
    assert document["conversation"]["conversation_id"] == conversation.conversation_id
    exported = document["messages"]
    assert [m["message_id"] for m in exported] == [m.message_id for m in listed.messages]
    assert [m["content"] for m in exported] == [m.content for m in listed.messages]
    reply = exported[1]
    assert reply["role"] == "assistant" and reply["status"] == "completed" and reply["model"] == "fake-echo"
    assert reply["usage"]["completion_tokens"] == listed.messages[1].usage.completion_tokens > 0
    assert set(reply) >= {"create_time", "update_time", "request_id", "finish_reason", "error_message"}


async def test_export_markdown_is_a_readable_transcript(replica: Replica) -> None:
    conversation = await replica.conversation("alice", title="Story time")
    response = await _say(replica, "alice", conversation.conversation_id, "Tell me a story")
    text, media = await _export(replica, "alice", conversation.conversation_id, pb.EXPORT_FORMAT_MARKDOWN)
    assert media == "text/markdown"
    assert text.startswith("# Story time\n")
    user_at = text.index("## User · ")
    reply_at = text.index("## Assistant · ")
    assert user_at < text.index("Tell me a story") < reply_at < text.index(response.message.content)


async def test_export_of_a_long_conversation_comes_in_pages(replica: Replica) -> None:
    conversation = await replica.conversation("alice")
    for i in range(60):
        await _say(replica, "alice", conversation.conversation_id, f"line {i}")
    text, _ = await _export(replica, "alice", conversation.conversation_id, pb.EXPORT_FORMAT_CSV)
    rows = list(csv.reader(io.StringIO(text, newline="")))[1:]
    assert [int(r[0]) for r in rows] == list(range(1, 121))
    assert [r[2] for r in rows[::2]] == [f"line {i}" for i in range(60)]


async def test_export_errors(replica: Replica) -> None:
    conversation = await replica.conversation("alice")
    with pytest.raises(grpc.aio.AioRpcError) as no_format:
        await _export(replica, "alice", conversation.conversation_id, pb.EXPORT_FORMAT_UNSPECIFIED)
    assert no_format.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "format" in violations(no_format.value)
    with pytest.raises(grpc.aio.AioRpcError) as other_user:
        await _export(replica, "bob", conversation.conversation_id, pb.EXPORT_FORMAT_CSV)
    assert other_user.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await _export(replica, "alice", str(uuid.uuid4()), pb.EXPORT_FORMAT_CSV)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_query_of_only_common_words_is_answered(replica: Replica) -> None:
    conversation = await replica.conversation("alice")
    await _say(replica, "alice", conversation.conversation_id, "the and of")
    found = await _search(replica, "alice", "the of")
    # Postgres drops English stop words (nothing left to match); SQLite's FTS5 keeps them. Neither is an error.
    expected = ["the and of"] if replica.app.deps.database.is_sqlite else []
    assert [r.message.content for r in found.results] == expected


# ---------------------------------------------------------------------------------------------- isolation, stability
# A user's search must not depend on anyone else's data: not the results, not the scores (scores that move
# when another user writes a word tell whether they did), and a page walk must not skip or repeat a match
# while others, or the same user, write.

WORDS = ["zebra", "river", "otter", "bridge", "stripes", "the", "a", "near", "quokka", "old"]
ALICE_SAYS = [
    "the zebra crossed the wide river near the old bridge",
    "zebra zebra zebra: stripes of a zebra",
    "an otter and a zebra by the river",
    "otter notes",
    "Zebras!",
]
QUERIES = ["zebra", "zebra river", "otter", "stripes"]


async def _results(replica: Replica, user: str, query: str) -> list[tuple[str, float, str]]:
    found = await _search(replica, user, query, page_size=100)
    return [(r.message.message_id, r.score, r.snippet) for r in found.results]


async def test_alices_results_and_scores_do_not_depend_on_what_bob_writes(replica: Replica) -> None:
    alice = await replica.conversation("alice")
    for text in ALICE_SAYS:
        await _say(replica, "alice", alice.conversation_id, text)
    before = {query: await _results(replica, "alice", query) for query in QUERIES}
    assert all(before.values())
    bob = await replica.conversation("bob")
    # Hypothesis drives the examples from a worker thread; each runs on this loop, next to the server.
    loop = asyncio.get_running_loop()

    async def example(texts: list[str]) -> None:
        for text in texts:  # bob's writes accumulate across examples: more and more of the same words
            await _say(replica, "bob", bob.conversation_id, text)
        for query in QUERIES:
            assert await _results(replica, "alice", query) == before[query], query

    @settings(max_examples=15, deadline=None, database=None)
    @given(texts=st.lists(st.lists(st.sampled_from(WORDS), min_size=1, max_size=12).map(" ".join), max_size=4))
    def check(texts: list[str]) -> None:
        asyncio.run_coroutine_threadsafe(example(texts), loop).result(timeout=60)

    await asyncio.to_thread(check)


async def test_a_page_walk_while_others_and_the_user_write_returns_every_match_once(replica: Replica) -> None:
    alice = await replica.conversation("alice")
    bob = await replica.conversation("bob")
    originals = set()
    for i in range(30):
        sent = await _say(replica, "alice", alice.conversation_id, "quokka " * (1 + i % 4) + f"sighting {i}")
        originals.add(sent.user_message.message_id)

    seen: list[pb.SearchResult] = []
    token = ""
    for page_number in range(40):
        page = await _search(replica, "alice", "quokka", page_size=4, page_token=token)
        seen.extend(page.results)
        token = page.next_page_token
        if not token:
            break
        # Between pages: bob writes the word (many times), and alice writes new matches of her own.
        for j in range(3):
            await _say(replica, "bob", bob.conversation_id, "quokka " * (1 + j) + "bob was here")
        await _say(replica, "alice", alice.conversation_id, f"quokka update {page_number}")
    assert not token, "the walk did not end"

    ids = [r.message.message_id for r in seen]
    assert len(ids) == len(set(ids)), "a match came twice"
    assert originals <= set(ids), f"{len(originals - set(ids))} of {len(originals)} matches were skipped"
    order = [(r.score, r.message.create_time.ToNanoseconds()) for r in seen if r.message.message_id in originals]
    assert order == sorted(order, reverse=True)  # best first, the newest first among equals
