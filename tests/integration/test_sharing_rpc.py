"""Sharing over a real server, on SQLite and Postgres: every conversation RPC against its owner, a viewer (the
conversation is shared with them) and a stranger, as one matrix; grants; and the listings a viewer sees."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2

from chat.v1 import chat_pb2 as pb
from service.domain import Completion, Prompt, Role
from service.llm.fake import FakeProvider
from tests.integration.harness import Replica, running_replica, settings_for
from tests.integration.rpc_errors import violations

pytestmark = pytest.mark.timeout(60)

OWNER, VIEWER, STRANGER = "alice", "bob", "mallory"
HOLD = "hold on"  # a reply to this is generated up to its first piece, then waits until it is cancelled
Metadata = Sequence[tuple[str, str]]


class HoldingModel(FakeProvider):
    """The fake model, except that a reply to HOLD stops after its first piece and waits (until cancelled)."""

    def stream(self, prompt: Prompt) -> AsyncIterator[str | Completion]:
        last = next((t.content for t in reversed(prompt.turns) if t.role is Role.USER), "")
        return self._hold() if last == HOLD else super().stream(prompt)

    async def _hold(self) -> AsyncIterator[str | Completion]:
        yield "a partial "
        await asyncio.Event().wait()
        yield Completion()


@dataclass
class Scene:
    """Alice's conversation, shared with Bob: an exchange whose user message carries a text file, and (when a case
    needs one) a reply still generating."""

    replica: Replica
    conversation_id: str
    attachment_id: str
    reply_id: str = ""


@pytest.fixture
async def replica(database_url: str) -> AsyncIterator[Replica]:
    async with running_replica(settings_for(database_url), provider=HoldingModel()) as running:
        yield running


async def scene(replica: Replica, *, live_reply: bool) -> Scene:
    auth = await replica.auth(OWNER)
    metadata = pb.AttachmentMetadata(filename="notes.txt", content_type="text/plain")
    upload = [pb.UploadAttachmentRequest(metadata=metadata), pb.UploadAttachmentRequest(data=b"shared notes")]
    attachment = (await replica.stub.UploadAttachment(iter(upload), metadata=auth)).attachment
    conversation = await replica.conversation(OWNER, title="Narwhals")
    cid = conversation.conversation_id
    await replica.stub.SendMessage(
        pb.SendMessageRequest(conversation_id=cid, content="narwhal facts", attachment_ids=[attachment.attachment_id]),
        metadata=auth,
    )
    await replica.stub.ShareConversation(
        pb.ShareConversationRequest(conversation_id=cid, user_id=VIEWER), metadata=auth
    )
    made = Scene(replica, cid, attachment.attachment_id)
    if live_reply:
        sent = await replica.stub.SendMessage(
            pb.SendMessageRequest(conversation_id=cid, content=HOLD, background=True), metadata=auth
        )
        made.reply_id = sent.message.message_id
    return made


# ------------------------------------------------------------------------------------------- the calls


async def first_events(call: Any, count: int) -> list[Any]:
    """The first `count` responses of a server stream, then the stream is cancelled."""
    try:
        return [await call.read() for _ in range(count)]
    finally:
        call.cancel()


async def get_conversation(s: Scene, auth: Metadata) -> Any:
    return await s.replica.stub.GetConversation(
        pb.GetConversationRequest(conversation_id=s.conversation_id), metadata=auth
    )


async def list_messages(s: Scene, auth: Metadata) -> Any:
    return await s.replica.stub.ListMessages(pb.ListMessagesRequest(conversation_id=s.conversation_id), metadata=auth)


async def export_conversation(s: Scene, auth: Metadata) -> Any:
    request = pb.ExportConversationRequest(conversation_id=s.conversation_id, format=pb.EXPORT_FORMAT_JSON)
    return [chunk async for chunk in s.replica.stub.ExportConversation(request, metadata=auth)]


async def resume_reply(s: Scene, auth: Metadata) -> Any:
    call = s.replica.stub.ResumeReply(pb.ResumeReplyRequest(message_id=s.reply_id), metadata=auth)
    started, delta = await first_events(call, 2)
    assert delta.event.delta.text == "a partial "  # followed live
    return started


async def get_attachment(s: Scene, auth: Metadata) -> Any:
    return await s.replica.stub.GetAttachment(pb.GetAttachmentRequest(attachment_id=s.attachment_id), metadata=auth)


async def download_attachment(s: Scene, auth: Metadata) -> Any:
    request = pb.DownloadAttachmentRequest(attachment_id=s.attachment_id)
    data = b"".join([chunk.data async for chunk in s.replica.stub.DownloadAttachment(request, metadata=auth)])
    assert data == b"shared notes"


async def update_conversation(s: Scene, auth: Metadata) -> Any:
    request = pb.UpdateConversationRequest(
        conversation=pb.Conversation(conversation_id=s.conversation_id, title="renamed"),
        update_mask=field_mask_pb2.FieldMask(paths=["title"]),
    )
    return await s.replica.stub.UpdateConversation(request, metadata=auth)


async def delete_conversation(s: Scene, auth: Metadata) -> Any:
    request = pb.DeleteConversationRequest(conversation_id=s.conversation_id)
    return await s.replica.stub.DeleteConversation(request, metadata=auth)


async def send_message(s: Scene, auth: Metadata) -> Any:
    request = pb.SendMessageRequest(conversation_id=s.conversation_id, content="more")
    return await s.replica.stub.SendMessage(request, metadata=auth)


async def stream_reply(s: Scene, auth: Metadata) -> Any:
    request = pb.StreamReplyRequest(conversation_id=s.conversation_id, content="more")
    return [response async for response in s.replica.stub.StreamReply(request, metadata=auth)]


async def cancel_reply(s: Scene, auth: Metadata) -> Any:
    cancelled = await s.replica.stub.CancelReply(pb.CancelReplyRequest(message_id=s.reply_id), metadata=auth)
    assert cancelled.message.status == pb.MESSAGE_STATUS_CANCELLED


async def coach(s: Scene, auth: Metadata) -> Any:
    call = s.replica.stub.Coach(metadata=auth)
    await call.write(pb.CoachRequest(start=pb.CoachStart(persona="english_buddy", conversation_id=s.conversation_id)))
    (first,) = await first_events(call, 1)
    assert first.HasField("session_started")


async def share_conversation(s: Scene, auth: Metadata) -> Any:
    request = pb.ShareConversationRequest(conversation_id=s.conversation_id, user_id="carol")
    return await s.replica.stub.ShareConversation(request, metadata=auth)


async def unshare_conversation(s: Scene, auth: Metadata) -> Any:
    request = pb.UnshareConversationRequest(conversation_id=s.conversation_id, user_id=VIEWER)
    return await s.replica.stub.UnshareConversation(request, metadata=auth)


async def list_conversation_shares(s: Scene, auth: Metadata) -> Any:
    request = pb.ListConversationSharesRequest(conversation_id=s.conversation_id)
    listed = await s.replica.stub.ListConversationShares(request, metadata=auth)
    assert [share.user_id for share in listed.shares] == [VIEWER]


async def exchange(s: Scene) -> tuple[pb.Message, pb.Message]:
    """The scene's question and its reply (as the owner lists them)."""
    request = pb.ListMessagesRequest(conversation_id=s.conversation_id)
    question, answer = (await s.replica.stub.ListMessages(request, metadata=await s.replica.auth(OWNER))).messages
    return question, answer


async def list_siblings(s: Scene, auth: Metadata) -> Any:
    _, answer = await exchange(s)
    return await s.replica.stub.ListSiblings(pb.ListSiblingsRequest(message_id=answer.message_id), metadata=auth)


async def regenerate_reply(s: Scene, auth: Metadata) -> Any:
    _, answer = await exchange(s)
    request = pb.RegenerateReplyRequest(message_id=answer.message_id)
    return [response async for response in s.replica.stub.RegenerateReply(request, metadata=auth)]


async def edit_message(s: Scene, auth: Metadata) -> Any:
    question, _ = await exchange(s)
    request = pb.EditMessageRequest(message_id=question.message_id, content="more narwhal facts")
    return [response async for response in s.replica.stub.EditMessage(request, metadata=auth)]


async def set_current_branch(s: Scene, auth: Metadata) -> Any:
    question, _ = await exchange(s)
    request = pb.SetCurrentBranchRequest(conversation_id=s.conversation_id, message_id=question.message_id)
    return await s.replica.stub.SetCurrentBranch(request, metadata=auth)


async def delete_message(s: Scene, auth: Metadata) -> Any:
    _, answer = await exchange(s)
    return await s.replica.stub.DeleteMessage(pb.DeleteMessageRequest(message_id=answer.message_id), metadata=auth)


Call = Callable[[Scene, Metadata], Awaitable[Any]]
READS: dict[str, Call] = {
    "GetConversation": get_conversation,
    "ListMessages": list_messages,
    "ExportConversation": export_conversation,
    "ResumeReply": resume_reply,
    "GetAttachment": get_attachment,
    "DownloadAttachment": download_attachment,
    "ListSiblings": list_siblings,
}
WRITES: dict[str, Call] = {
    "UpdateConversation": update_conversation,
    "DeleteConversation": delete_conversation,
    "SendMessage": send_message,
    "StreamReply": stream_reply,
    "CancelReply": cancel_reply,
    "Coach": coach,
    "ShareConversation": share_conversation,
    "UnshareConversation": unshare_conversation,
    "ListConversationShares": list_conversation_shares,
    "RegenerateReply": regenerate_reply,
    "EditMessage": edit_message,
    "SetCurrentBranch": set_current_branch,
    "DeleteMessage": delete_message,
}
LIVE_REPLY = {"ResumeReply", "CancelReply"}


async def outcome(call: Call, s: Scene, user: str) -> str:
    try:
        await call(s, await s.replica.auth(user))
    except grpc.aio.AioRpcError as error:
        return error.code().name
    return "OK"


@pytest.mark.parametrize("method", [*READS, *WRITES])
async def test_the_owner_may_do_anything_a_viewer_only_read_a_stranger_nothing(replica: Replica, method: str) -> None:
    call = READS.get(method) or WRITES[method]
    made = await scene(replica, live_reply=method in LIVE_REPLY)

    # The stranger and the viewer first: had either changed anything, the owner's call would show it.
    row = {user: await outcome(call, made, user) for user in (STRANGER, VIEWER, OWNER)}

    viewer = "OK" if method in READS else "PERMISSION_DENIED"
    assert row == {STRANGER: "PERMISSION_DENIED", VIEWER: viewer, OWNER: "OK"}


# ------------------------------------------------------------------------------------------- grants


async def test_grants_are_listed_kept_once_and_taken_back(replica: Replica) -> None:
    auth = await replica.auth(OWNER)
    cid = (await replica.conversation(OWNER)).conversation_id
    first = await replica.stub.ShareConversation(
        pb.ShareConversationRequest(conversation_id=cid, user_id=VIEWER), metadata=auth
    )
    again = await replica.stub.ShareConversation(
        pb.ShareConversationRequest(conversation_id=cid, user_id=VIEWER, role=pb.SHARE_ROLE_VIEWER), metadata=auth
    )
    assert (first.share.user_id, first.share.role, first.share.conversation_id) == (VIEWER, pb.SHARE_ROLE_VIEWER, cid)
    assert again.share == first.share

    await replica.stub.UnshareConversation(
        pb.UnshareConversationRequest(conversation_id=cid, user_id=VIEWER), metadata=auth
    )
    listed = await replica.stub.ListConversationShares(
        pb.ListConversationSharesRequest(conversation_id=cid), metadata=auth
    )
    assert list(listed.shares) == []
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await replica.stub.GetConversation(
            pb.GetConversationRequest(conversation_id=cid), metadata=await replica.auth(VIEWER)
        )
    assert gone.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as twice:
        await replica.stub.UnshareConversation(
            pb.UnshareConversationRequest(conversation_id=cid, user_id=VIEWER), metadata=auth
        )
    assert twice.value.code() == grpc.StatusCode.NOT_FOUND


async def test_bad_grants_are_invalid(replica: Replica) -> None:
    auth = await replica.auth(OWNER)
    cid = (await replica.conversation(OWNER)).conversation_id
    cases = {
        "user_id": pb.ShareConversationRequest(conversation_id=cid, user_id=OWNER),
        "role": pb.ShareConversationRequest(conversation_id=cid, user_id=VIEWER, role=7),  # type: ignore[arg-type]
        "conversation_id": pb.ShareConversationRequest(conversation_id="nope", user_id=VIEWER),
    }
    for field, request in cases.items():
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await replica.stub.ShareConversation(request, metadata=auth)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in violations(error.value), field


# ------------------------------------------------------------------------------------------- listings


async def titles(replica: Replica, user: str, scope: int) -> list[str]:
    listed = await replica.stub.ListConversations(
        pb.ListConversationsRequest(scope=scope),
        metadata=await replica.auth(user),  # type: ignore[arg-type]
    )
    return [c.title for c in listed.conversations]


async def test_a_viewer_lists_and_searches_what_is_shared_and_never_the_owners_other_conversations(
    replica: Replica,
) -> None:
    made = await scene(replica, live_reply=False)
    kept = await replica.conversation(OWNER, title="Alice's own")
    await replica.stub.SendMessage(
        pb.SendMessageRequest(conversation_id=kept.conversation_id, content="private narwhal"),
        metadata=await replica.auth(OWNER),
    )
    await replica.conversation(VIEWER, title="Bob's own")

    assert await titles(replica, VIEWER, pb.CONVERSATION_SCOPE_UNSPECIFIED) == ["Bob's own"]
    assert await titles(replica, VIEWER, pb.CONVERSATION_SCOPE_SHARED) == ["Narwhals"]
    assert await titles(replica, VIEWER, pb.CONVERSATION_SCOPE_ALL) == ["Bob's own", "Narwhals"]
    assert await titles(replica, STRANGER, pb.CONVERSATION_SCOPE_ALL) == []
    shared = await replica.stub.GetConversation(
        pb.GetConversationRequest(conversation_id=made.conversation_id), metadata=await replica.auth(VIEWER)
    )
    assert shared.conversation.owner_user_id == OWNER

    async def search(user: str, scope: int) -> list[str]:
        found = await replica.stub.SearchMessages(
            pb.SearchMessagesRequest(query="narwhal", scope=scope),  # type: ignore[arg-type]
            metadata=await replica.auth(user),
        )
        return [r.message.content for r in found.results]

    assert await search(VIEWER, pb.CONVERSATION_SCOPE_UNSPECIFIED) == []
    assert await search(VIEWER, pb.CONVERSATION_SCOPE_SHARED) == ["narwhal facts"]
    assert await search(STRANGER, pb.CONVERSATION_SCOPE_ALL) == []
    assert sorted(await search(OWNER, pb.CONVERSATION_SCOPE_UNSPECIFIED)) == ["narwhal facts", "private narwhal"]


async def test_a_viewer_follows_a_reply_live_until_the_owner_cancels_it(replica: Replica) -> None:
    made = await scene(replica, live_reply=True)
    call = replica.stub.ResumeReply(
        pb.ResumeReplyRequest(message_id=made.reply_id), metadata=await replica.auth(VIEWER)
    )
    events = [(await call.read()).event for _ in range(2)]
    assert events[1].delta.text == "a partial "

    await replica.stub.CancelReply(pb.CancelReplyRequest(message_id=made.reply_id), metadata=await replica.auth(OWNER))

    rest = []
    with contextlib.suppress(StopAsyncIteration):
        while (response := await call.read()) is not grpc.aio.EOF:
            rest.append(response.event)
    assert rest[-1].completed.message.status == pb.MESSAGE_STATUS_CANCELLED
    assert rest[-1].completed.message.content == "a partial "
