"""Bad input gets INVALID_ARGUMENT with BadRequest field violations, and never changes stored data."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from chat.v1 import chat_pb2 as pb
from tests.integration.harness import Replica
from tests.integration.rpc_errors import violations


async def _finish(call: Any) -> None:
    """Await a unary call, or read the first response of a streaming one."""
    await (call.read() if hasattr(call, "read") else call)


async def expect_invalid(call: Any, field: str) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await _finish(call)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value.details()
    found = violations(error.value)
    assert field in found, found
    return found[field]


async def test_message_content_is_validated(replica: Replica) -> None:
    auth = await replica.auth("alice")
    cid = (await replica.conversation("alice")).conversation_id
    send = replica.stub.SendMessage
    assert "empty" in await expect_invalid(
        send(pb.SendMessageRequest(conversation_id=cid, content=""), metadata=auth), "content"
    )
    assert "empty" in await expect_invalid(
        send(pb.SendMessageRequest(conversation_id=cid, content="  \n"), metadata=auth), "content"
    )
    too_big = "é" * (16 * 1024 + 1)  # 32 KiB + 2 bytes of UTF-8
    assert "32768" in await expect_invalid(
        replica.stub.StreamReply(pb.StreamReplyRequest(conversation_id=cid, content=too_big), metadata=auth),
        "content",
    )
    exactly = "é" * (16 * 1024)
    ok = await send(pb.SendMessageRequest(conversation_id=cid, content=exactly), metadata=auth)
    assert ok.user_message.content == exactly

    listed = await replica.stub.ListMessages(pb.ListMessagesRequest(conversation_id=cid), metadata=auth)
    assert len(listed.messages) == 2  # only the valid message and its reply were stored


async def test_ids_are_validated(replica: Replica) -> None:
    auth = await replica.auth("alice")
    stub = replica.stub
    await expect_invalid(
        stub.GetConversation(pb.GetConversationRequest(conversation_id="nope"), metadata=auth),
        "conversation_id",
    )
    await expect_invalid(stub.GetConversation(pb.GetConversationRequest(), metadata=auth), "conversation_id")
    await expect_invalid(
        stub.ListMessages(pb.ListMessagesRequest(conversation_id="../x"), metadata=auth), "conversation_id"
    )
    await expect_invalid(
        stub.SendMessage(pb.SendMessageRequest(conversation_id="1", content="x"), metadata=auth),
        "conversation_id",
    )
    await expect_invalid(stub.CancelReply(pb.CancelReplyRequest(message_id="bad"), metadata=auth), "message_id")
    await expect_invalid(stub.ResumeReply(pb.ResumeReplyRequest(message_id="bad"), metadata=auth), "message_id")
    await expect_invalid(
        stub.UpdateConversation(pb.UpdateConversationRequest(conversation=pb.Conversation(title="x")), metadata=auth),
        "conversation.conversation_id",
    )


async def test_paging_and_offsets_are_validated(replica: Replica) -> None:
    auth = await replica.auth("alice")
    stub = replica.stub
    cid = (await replica.conversation("alice")).conversation_id
    await expect_invalid(stub.ListConversations(pb.ListConversationsRequest(page_size=-1), metadata=auth), "page_size")
    await expect_invalid(
        stub.ListMessages(pb.ListMessagesRequest(conversation_id=cid, page_size=-5), metadata=auth),
        "page_size",
    )
    await expect_invalid(stub.ListModels(pb.ListModelsRequest(page_size=-1), metadata=auth), "page_size")
    for token in ("garbage", "AAAA", "%%%", "x" * 500):
        await expect_invalid(
            stub.ListConversations(pb.ListConversationsRequest(page_token=token), metadata=auth), "page_token"
        )
    # A token for one conversation's messages is not valid for another's.
    for text in ("a", "b"):
        await stub.SendMessage(pb.SendMessageRequest(conversation_id=cid, content=text), metadata=auth)
    page = await stub.ListMessages(pb.ListMessagesRequest(conversation_id=cid, page_size=1), metadata=auth)
    other = (await replica.conversation("alice")).conversation_id
    await expect_invalid(
        stub.ListMessages(
            pb.ListMessagesRequest(conversation_id=other, page_token=page.next_page_token), metadata=auth
        ),
        "page_token",
    )
    reply = (await stub.SendMessage(pb.SendMessageRequest(conversation_id=other, content="c"), metadata=auth)).message
    await expect_invalid(
        stub.ResumeReply(pb.ResumeReplyRequest(message_id=reply.message_id, offset=-1), metadata=auth),
        "offset",
    )


async def test_conversation_fields_are_validated(replica: Replica) -> None:
    auth = await replica.auth("alice")
    create = replica.stub.CreateConversation
    await expect_invalid(create(pb.CreateConversationRequest(title="t" * 201), metadata=auth), "title")
    await expect_invalid(create(pb.CreateConversationRequest(persona="no_such_persona"), metadata=auth), "persona")
    await expect_invalid(
        create(pb.CreateConversationRequest(persona="english_buddy", system_prompt="x"), metadata=auth),
        "persona",
    )
    await expect_invalid(
        create(pb.CreateConversationRequest(system_prompt="x" * 40000), metadata=auth), "system_prompt"
    )
    await expect_invalid(
        replica.stub.SendMessage(
            pb.SendMessageRequest(
                conversation_id=(await replica.conversation("alice")).conversation_id,
                content="x",
                request_id="r" * 65,
            ),
            metadata=auth,
        ),
        "request_id",
    )
    cid = (await replica.conversation("alice")).conversation_id
    from google.protobuf import field_mask_pb2

    await expect_invalid(
        replica.stub.UpdateConversation(
            pb.UpdateConversationRequest(
                conversation=pb.Conversation(conversation_id=cid),
                update_mask=field_mask_pb2.FieldMask(paths=["owner"]),
            ),
            metadata=auth,
        ),
        "update_mask",
    )
    with pytest.raises(grpc.aio.AioRpcError) as unauth:
        await create(pb.CreateConversationRequest())
    assert unauth.value.code() == grpc.StatusCode.UNAUTHENTICATED
    listed = await replica.stub.ListConversations(pb.ListConversationsRequest(), metadata=auth)
    assert {c.title for c in listed.conversations} == {"New conversation"}  # only the valid ones exist
