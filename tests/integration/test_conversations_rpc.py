"""Conversation CRUD, listing and isolation over a real server, on SQLite and Postgres."""

from __future__ import annotations

import uuid

import grpc
import pytest
from google.protobuf import field_mask_pb2

from chat.v1 import chat_pb2 as pb
from tests.integration.harness import Replica
from tests.integration.rpc_errors import error_info


async def test_create_get_update_delete(replica: Replica) -> None:
    auth = await replica.auth("alice")
    created = await replica.conversation("alice", title="Trip plans", persona="english_buddy")
    assert created.title == "Trip plans" and created.model == "fake-echo" and created.persona == "english_buddy"
    assert uuid.UUID(created.conversation_id)
    assert created.create_time.seconds > 0

    got = await replica.stub.GetConversation(
        pb.GetConversationRequest(conversation_id=created.conversation_id), metadata=auth
    )
    assert got.conversation == created

    updated = await replica.stub.UpdateConversation(
        pb.UpdateConversationRequest(
            conversation=pb.Conversation(conversation_id=created.conversation_id, title="Renamed", model="ignored"),
            update_mask=field_mask_pb2.FieldMask(paths=["title"]),
        ),
        metadata=auth,
    )
    assert updated.conversation.title == "Renamed" and updated.conversation.model == "fake-echo"

    await replica.stub.DeleteConversation(
        pb.DeleteConversationRequest(conversation_id=created.conversation_id), metadata=auth
    )
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await replica.stub.GetConversation(
            pb.GetConversationRequest(conversation_id=created.conversation_id), metadata=auth
        )
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


async def test_defaults_and_model_checks(replica: Replica) -> None:
    created = await replica.conversation("alice")
    assert created.title == "New conversation" and created.model == "fake-echo"
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await replica.conversation("alice", model="no-such-model")
    assert unknown.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no-such-model" in (unknown.value.details() or "")
    assert error_info(unknown.value).metadata["model"] == "no-such-model"


async def test_list_conversations_newest_first_in_pages(replica: Replica) -> None:
    auth = await replica.auth("alice")
    ids = [(await replica.conversation("alice", title=f"c{i}")).conversation_id for i in range(5)]
    await replica.conversation("bob", title="not yours")

    seen, token = [], ""
    while True:
        page = await replica.stub.ListConversations(
            pb.ListConversationsRequest(page_size=2, page_token=token), metadata=auth
        )
        assert len(page.conversations) <= 2
        seen += [c.conversation_id for c in page.conversations]
        if not (token := page.next_page_token):
            break
    assert seen == list(reversed(ids))

    # Writing to the oldest conversation brings it to the top.
    await replica.stub.SendMessage(pb.SendMessageRequest(conversation_id=ids[0], content="bump"), metadata=auth)
    first = await replica.stub.ListConversations(pb.ListConversationsRequest(page_size=1), metadata=auth)
    assert first.conversations[0].conversation_id == ids[0]


async def test_page_tokens_are_bound_to_the_caller(replica: Replica) -> None:
    for i in range(3):
        await replica.conversation("alice", title=f"a{i}")
    page = await replica.stub.ListConversations(
        pb.ListConversationsRequest(page_size=1), metadata=await replica.auth("alice")
    )
    assert page.next_page_token
    with pytest.raises(grpc.aio.AioRpcError) as stolen:
        await replica.stub.ListConversations(
            pb.ListConversationsRequest(page_size=1, page_token=page.next_page_token),
            metadata=await replica.auth("mallory"),
        )
    assert stolen.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_list_messages_pages_oldest_first(replica: Replica) -> None:
    auth = await replica.auth("alice")
    conversation = await replica.conversation("alice")
    for text in ("one", "two", "three"):
        await replica.stub.SendMessage(
            pb.SendMessageRequest(conversation_id=conversation.conversation_id, content=text), metadata=auth
        )
    contents, token = [], ""
    while True:
        page = await replica.stub.ListMessages(
            pb.ListMessagesRequest(conversation_id=conversation.conversation_id, page_size=4, page_token=token),
            metadata=auth,
        )
        contents += [(m.role, m.content) for m in page.messages]
        if not (token := page.next_page_token):
            break
    assert [c for role, c in contents if role == pb.ROLE_USER] == ["one", "two", "three"]
    assert [role for role, _ in contents] == [pb.ROLE_USER, pb.ROLE_ASSISTANT] * 3


async def test_users_only_see_their_own_conversations(replica: Replica) -> None:
    mine = await replica.conversation("alice")
    bob = await replica.auth("bob")
    listed = await replica.stub.ListConversations(pb.ListConversationsRequest(), metadata=bob)
    assert listed.conversations == []

    calls = {
        "GetConversation": replica.stub.GetConversation(
            pb.GetConversationRequest(conversation_id=mine.conversation_id), metadata=bob
        ),
        "ListMessages": replica.stub.ListMessages(
            pb.ListMessagesRequest(conversation_id=mine.conversation_id), metadata=bob
        ),
        "SendMessage": replica.stub.SendMessage(
            pb.SendMessageRequest(conversation_id=mine.conversation_id, content="hi"), metadata=bob
        ),
        "UpdateConversation": replica.stub.UpdateConversation(
            pb.UpdateConversationRequest(conversation=pb.Conversation(conversation_id=mine.conversation_id, title="x")),
            metadata=bob,
        ),
        "DeleteConversation": replica.stub.DeleteConversation(
            pb.DeleteConversationRequest(conversation_id=mine.conversation_id), metadata=bob
        ),
    }
    for name, call in calls.items():
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await call
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED, name

    with pytest.raises(grpc.aio.AioRpcError) as stream_denied:
        await replica.stub.StreamReply(
            pb.StreamReplyRequest(conversation_id=mine.conversation_id, content="hi"), metadata=bob
        ).read()
    assert stream_denied.value.code() == grpc.StatusCode.PERMISSION_DENIED

    alice = await replica.auth("alice")
    reply = await replica.stub.SendMessage(
        pb.SendMessageRequest(conversation_id=mine.conversation_id, content="mine"), metadata=alice
    )
    with pytest.raises(grpc.aio.AioRpcError) as resume_denied:
        await replica.stub.ResumeReply(pb.ResumeReplyRequest(message_id=reply.message.message_id), metadata=bob).read()
    assert resume_denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as cancel_denied:
        await replica.stub.CancelReply(pb.CancelReplyRequest(message_id=reply.message.message_id), metadata=bob)
    assert cancel_denied.value.code() == grpc.StatusCode.PERMISSION_DENIED

    still = await replica.stub.GetConversation(
        pb.GetConversationRequest(conversation_id=mine.conversation_id), metadata=alice
    )
    assert still.conversation.title == mine.title  # nothing bob tried changed it


async def test_missing_resources_are_not_found(replica: Replica) -> None:
    auth = await replica.auth("alice")
    missing = str(uuid.uuid4())
    for call in (
        replica.stub.GetConversation(pb.GetConversationRequest(conversation_id=missing), metadata=auth),
        replica.stub.DeleteConversation(pb.DeleteConversationRequest(conversation_id=missing), metadata=auth),
        replica.stub.CancelReply(pb.CancelReplyRequest(message_id=missing), metadata=auth),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as resume:
        await replica.stub.ResumeReply(pb.ResumeReplyRequest(message_id=missing), metadata=auth).read()
    assert resume.value.code() == grpc.StatusCode.NOT_FOUND


async def test_delete_stops_a_reply_in_flight(slow_replica: Replica) -> None:
    replica = slow_replica
    auth = await replica.auth("alice")
    conversation = await replica.conversation("alice")
    call = replica.stub.StreamReply(
        pb.StreamReplyRequest(conversation_id=conversation.conversation_id, content="long"), metadata=auth
    )
    await call.read()
    await call.read()
    await replica.stub.DeleteConversation(
        pb.DeleteConversationRequest(conversation_id=conversation.conversation_id), metadata=auth
    )
    events = []
    while (response := await call.read()) is not grpc.aio.EOF:
        events.append(response.event)
    assert events[-1].completed.message.status == pb.MESSAGE_STATUS_CANCELLED
    assert replica.app.deps.use_cases.replies.in_flight == 0


async def test_list_models(replica: Replica) -> None:
    models = await replica.stub.ListModels(pb.ListModelsRequest(), metadata=await replica.auth("alice"))
    assert [(m.name, m.provider, m.default) for m in models.models] == [("fake-echo", "fake", True)]
