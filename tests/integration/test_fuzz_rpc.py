"""Hostile input: arbitrary field values for every request message of ChatService (and AdminService, as an
admin), sent to a real replica.

Every call must end with a proper status (never INTERNAL or UNKNOWN, never a hang), and the stored data must
stay consistent: one user's fuzzing never touches another user's data, and no reply is left half-done.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chat.v1 import admin_pb2 as apb
from chat.v1 import chat_pb2 as pb
from service.pagination import PageTokens
from tests.integration.harness import Replica, running_replica, settings_for
from tests.integration.hostile import (
    CALL_TIMEOUT,
    CLIENT_WRITE_RACE,
    LoopThread,
    UnlistedProvider,
    access_log,
    send,
)
from tests.integration.protobuf_strategies import message_of

logger = logging.getLogger(__name__)
CHAT = pb.DESCRIPTOR.services_by_name["ChatService"]
ADMIN = apb.DESCRIPTOR.services_by_name["AdminService"]
NEVER = {"UNKNOWN", "INTERNAL", "DEADLINE_EXCEEDED"}
EXAMPLES = 40  # hypothesis examples per method
SECRET = "the fuzzer's page token secret"
PERSONAS = ["english_buddy", "interview_coach", "socratic_tutor"]


async def _seed(replica: Replica) -> tuple[list[str], dict[str, Any]]:
    """Real ids for the fuzzer to aim at: alice's (the caller) and bob's (another user)."""
    ids: list[str] = []
    snapshot: dict[str, Any] = {}
    for user in ("alice", "bob"):
        auth = await replica.auth(user)
        conversation = await replica.conversation(user, title=f"{user}'s")
        reply = await replica.stub.SendMessage(
            pb.SendMessageRequest(conversation_id=conversation.conversation_id, content="seed"), metadata=auth
        )
        page = await replica.stub.ListConversations(pb.ListConversationsRequest(page_size=1), metadata=auth)
        ids += [conversation.conversation_id, reply.message.message_id, reply.message.conversation_id]
        if page.next_page_token:
            ids.append(page.next_page_token)
        if user == "bob":
            snapshot = await _state_of(replica, "bob")
    return ids, snapshot


async def _state_of(replica: Replica, user: str) -> dict[str, Any]:
    auth = await replica.auth(user)
    conversations = await replica.stub.ListConversations(pb.ListConversationsRequest(page_size=1000), metadata=auth)
    state: dict[str, Any] = {}
    for c in conversations.conversations:
        messages = await replica.stub.ListMessages(
            pb.ListMessagesRequest(conversation_id=c.conversation_id, page_size=1000), metadata=auth
        )
        state[c.conversation_id] = (c.SerializeToString(deterministic=True), list(messages.messages))
    return state


async def _settle(replica: Replica, user: str) -> dict[str, Any]:
    """The user's data once every reply has ended (bounded wait)."""
    for _ in range(400):
        state = await _state_of(replica, user)
        if not any(m.status == pb.MESSAGE_STATUS_STREAMING for _, messages in state.values() for m in messages):
            return state
        await asyncio.sleep(0.05)
    raise AssertionError("a reply stayed STREAMING")


def _named(ids: list[str]) -> dict[str, st.SearchStrategy[str]]:
    """Values worth aiming at: real ids, personas, models and update-mask paths, and page tokens whose MAC
    checks but whose cursor is anything at all (the fuzzer knows the key)."""
    minted = PageTokens(SECRET.encode())
    # Not "personas": ListPersonas parses its cursor in service/coaching/coach.py, outside this branch (see
    # test_page_tokens_rpc.py::test_a_malformed_personas_cursor_is_invalid_page_token).
    scopes = ["conversations:alice", "api_keys:*", "models", "search:alice\x00hello"]
    scopes += [f"messages:alice:{cid}" for cid in ids]
    cursors = st.one_of(st.text(max_size=60), st.from_regex(r"\A-?[0-9]{1,30}(\.[0-9]+)?(\|[0-9a-f-]{0,40})?\Z"))
    return {
        "id": st.sampled_from(ids),
        "persona": st.sampled_from(PERSONAS),
        "model": st.just("fake-echo"),
        "page_token": st.builds(minted.encode, st.sampled_from(scopes), cursors),
        "paths": st.sampled_from(["title", "model", "persona", "system_prompt"]),
    }


def test_every_chat_request_with_arbitrary_fields_gets_a_proper_status(database_url: str) -> None:
    runner = LoopThread()
    replica_context = running_replica(
        settings_for(
            database_url,
            rate_limit_per_minute=0,
            max_concurrent_streams=0,
            page_token_secret=SECRET,
            speech_provider="none",
        ),
        UnlistedProvider(reply_tokens=8),  # any model name is accepted: it must still fit its column
    )
    with access_log() as log:
        replica = runner.run(replica_context.__aenter__())
        try:
            ids, bob_before = runner.run(_seed(replica))
            named = _named(ids)
            auth = runner.run(replica.auth("alice"))
            admin_key = runner.run(replica.key("root", admin=True))
            admin = (("authorization", f"Bearer {admin_key}"),)
            seen: dict[str, set[str]] = {}
            logged = len(log.wait_for(1))

            def fuzz(method: MethodDescriptor) -> None:
                @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
                @given(data=st.data())
                def check(data: st.DataObject) -> None:
                    nonlocal logged
                    count = data.draw(st.integers(1, 3)) if method.client_streaming else 1
                    requests: list[Message] = [
                        data.draw(message_of(method.input_type, named), label="request") for _ in range(count)
                    ]
                    caller = admin if method.containing_service is ADMIN else auth
                    payloads = [r.SerializeToString() for r in requests]
                    code, details = runner.run(send(replica.channel, method, payloads, caller), CALL_TIMEOUT + 10)
                    seen.setdefault(method.name, set()).add(code.name)
                    logged += 1
                    entry = log.wait_for(logged)[logged - 1]
                    # As the server answered: never INTERNAL or UNKNOWN; and the client saw that answer (a status
                    # too big for the client's metadata limit reaches it as RESOURCE_EXHAUSTED instead).
                    assert entry.code not in NEVER, (method.name, requests)
                    if not (method.client_streaming and (code, details) == CLIENT_WRITE_RACE):
                        assert code.name == entry.code, (method.name, requests, details)

                check()

            # Each RPC gets its own examples; deletions last, so the others still find the seeded data.
            for method in sorted([*CHAT.methods, *ADMIN.methods], key=lambda m: m.name.startswith("Delete")):
                fuzz(method)
            # Both refusals and successes were reached (the fuzzer got past validation, too).
            assert any(codes - {"OK"} for codes in seen.values()) and any("OK" in codes for codes in seen.values())
            logger.info("codes per method: %s", {name: sorted(codes) for name, codes in seen.items()})

            # Consistency: bob's data is untouched; alice's replies all ended, and each conversation's current branch
            # (whatever was regenerated, edited, switched or deleted) is a path ending at its current message.
            assert runner.run(_settle(replica, "bob")) == bob_before
            alice = runner.run(_settle(replica, "alice"))
            for serialized, messages in alice.values():
                conversation = pb.Conversation.FromString(serialized)
                parents = ["", *(m.message_id for m in messages)][: len(messages)]
                assert [m.parent_message_id for m in messages] == parents
                assert conversation.current_message_id == (messages[-1].message_id if messages else "")
                for m in messages:
                    assert m.status != pb.MESSAGE_STATUS_STREAMING
                    assert 0 <= m.sibling_index < m.sibling_count
        finally:
            runner.run(replica_context.__aexit__(None, None, None))
            runner.close()


async def test_a_request_over_the_receive_limit_is_refused(database_url: str) -> None:
    async with running_replica(settings_for(database_url, max_receive_message_bytes=2048)) as replica:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await replica.conversation("alice", system_prompt="x" * 4096)
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        await replica.conversation("alice", system_prompt="x" * 1024)


async def test_another_users_page_token_reads_nothing_of_theirs(replica: Replica) -> None:
    for _ in range(3):
        await replica.conversation("bob")
    await replica.conversation("alice")
    bob = await replica.stub.ListConversations(
        pb.ListConversationsRequest(page_size=1), metadata=await replica.auth("bob")
    )
    assert bob.next_page_token
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await replica.stub.ListConversations(
            pb.ListConversationsRequest(page_size=1, page_token=bob.next_page_token),
            metadata=await replica.auth("alice"),
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
