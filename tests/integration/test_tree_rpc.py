"""The message tree over a real server on SQLite and Postgres: RegenerateReply, EditMessage, SetCurrentBranch,
ListSiblings, DeleteMessage, and ListMessages / SearchMessages / ExportConversation along branches."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Coroutine
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from chat.v1 import chat_pb2 as pb
from tests.integration.harness import Replica, running_replica, settings_for
from tests.integration.hostile import LoopThread
from tests.integration.rpc_errors import violations
from tests.integration.test_streaming import assert_contiguous, collect, wait_for_status
from tests.tree_machine import Listed, Made, NumberedProvider, TreeMachine

WAIT = 10.0


async def send(replica: Replica, conversation_id: str, text: str, user: str = "alice") -> pb.SendMessageResponse:
    request = pb.SendMessageRequest(conversation_id=conversation_id, content=text)
    return await replica.stub.SendMessage(request, metadata=await replica.auth(user))


async def branch(replica: Replica, conversation_id: str, branch_message_id: str = "") -> list[pb.Message]:
    """A branch as ListMessages pages it, two at a time."""
    auth, found, token = await replica.auth("alice"), [], ""
    while True:
        page = await replica.stub.ListMessages(
            pb.ListMessagesRequest(
                conversation_id=conversation_id, page_size=2, page_token=token, branch_message_id=branch_message_id
            ),
            metadata=auth,
        )
        found += page.messages
        token = page.next_page_token
        if not token:
            return found


async def regenerate(replica: Replica, message_id: str, request_id: str = "") -> list[pb.ReplyEvent]:
    call = replica.stub.RegenerateReply(
        pb.RegenerateReplyRequest(message_id=message_id, request_id=request_id), metadata=await replica.auth("alice")
    )
    async with asyncio.timeout(WAIT):
        events, _ = await collect(call)
    return events


async def edit(replica: Replica, message_id: str, text: str, request_id: str = "") -> list[pb.ReplyEvent]:
    call = replica.stub.EditMessage(
        pb.EditMessageRequest(message_id=message_id, content=text, request_id=request_id),
        metadata=await replica.auth("alice"),
    )
    async with asyncio.timeout(WAIT):
        events, _ = await collect(call)
    return events


def contents(messages: list[pb.Message]) -> list[str]:
    return [m.content for m in messages]


def kinds(events: list[pb.ReplyEvent]) -> list[str]:
    return [e.WhichOneof("event") or "" for e in events]


async def test_regenerate_streams_a_sibling_that_becomes_current(replica: Replica) -> None:
    conversation_id = (await replica.conversation("alice")).conversation_id
    await send(replica, conversation_id, "hello")
    asked = await send(replica, conversation_id, "tell me more")

    events = await regenerate(replica, asked.message.message_id, str(uuid.uuid4()))

    assert kinds(events)[0] == "started" and kinds(events)[-1] == "completed" and "delta" in kinds(events)
    assert_contiguous(events)
    again = events[-1].completed.message
    assert events[0].started.user_message == asked.user_message
    assert again.parent_message_id == asked.user_message.message_id
    assert again.content == "".join(e.delta.text for e in events if e.HasField("delta"))
    listed = await branch(replica, conversation_id)
    assert [m.message_id for m in listed][-1] == again.message_id
    last = listed[-1]
    assert (last.sibling_count, last.sibling_index, last.previous_sibling_id, last.next_sibling_id) == (
        2,
        1,
        asked.message.message_id,
        "",
    )
    siblings = await replica.stub.ListSiblings(
        pb.ListSiblingsRequest(message_id=again.message_id, page_size=1), metadata=await replica.auth("alice")
    )
    assert [m.message_id for m in siblings.messages] == [asked.message.message_id] and siblings.next_page_token


async def test_a_regenerated_reply_resumes_cancels_and_attaches_a_retry(slow_replica: Replica) -> None:
    replica, auth = slow_replica, await slow_replica.auth("alice")
    conversation_id = (await replica.conversation("alice")).conversation_id
    asked = await send(replica, conversation_id, "hello")
    request = pb.RegenerateReplyRequest(message_id=asked.message.message_id, request_id=str(uuid.uuid4()))
    call = replica.stub.RegenerateReply(request, metadata=auth)
    started = (await call.read()).event.started
    first = (await call.read()).event.delta
    call.cancel()  # the client goes away: the reply goes on
    reply_id = started.assistant_message.message_id

    retried = replica.stub.RegenerateReply(request, metadata=auth)  # a retry attaches to it
    assert (await retried.read()).event.started.assistant_message.message_id == reply_id
    retried.cancel()
    resumed = replica.stub.ResumeReply(
        pb.ResumeReplyRequest(message_id=reply_id, offset=len(first.text)), metadata=auth
    )
    assert (await resumed.read()).event.HasField("started")
    assert (await resumed.read()).event.delta.offset == len(first.text)
    cancelled = await replica.stub.CancelReply(pb.CancelReplyRequest(message_id=reply_id), metadata=auth)
    assert cancelled.message.status == pb.MESSAGE_STATUS_CANCELLED
    async with asyncio.timeout(WAIT):
        rest, _ = await collect(resumed)
    assert rest[-1].completed.message.status == pb.MESSAGE_STATUS_CANCELLED
    assert len(await branch(replica, conversation_id)) == 2  # the regenerated reply, cancelled, is current


async def test_editing_branches_and_the_old_branch_stays_readable(replica: Replica) -> None:
    conversation_id = (await replica.conversation("alice")).conversation_id
    first = await send(replica, conversation_id, "what is a cat?")
    await send(replica, conversation_id, "and a dog?")

    events = await edit(replica, first.user_message.message_id, "what is a narwhal?")

    edited = events[0].started.user_message
    assert (edited.content, edited.parent_message_id) == ("what is a narwhal?", "")
    reply = events[-1].completed.message
    assert contents(await branch(replica, conversation_id)) == ["what is a narwhal?", reply.content]
    old = await branch(replica, conversation_id, first.user_message.message_id)
    assert contents(old)[0::2] == ["what is a cat?", "and a dog?"]
    assert (old[0].sibling_count, old[0].sibling_index, old[0].next_sibling_id) == (2, 0, edited.message_id)


async def test_an_edited_message_keeps_the_files_it_carries(replica: Replica) -> None:
    auth = await replica.auth("alice")
    metadata = pb.AttachmentMetadata(filename="notes.txt", content_type="text/plain")
    upload = [pb.UploadAttachmentRequest(metadata=metadata), pb.UploadAttachmentRequest(data=b"narwhal notes")]
    attachment_id = (await replica.stub.UploadAttachment(iter(upload), metadata=auth)).attachment.attachment_id
    conversation_id = (await replica.conversation("alice")).conversation_id
    asked = await replica.stub.SendMessage(
        pb.SendMessageRequest(conversation_id=conversation_id, content="summarise", attachment_ids=[attachment_id]),
        metadata=auth,
    )

    events = await edit(replica, asked.user_message.message_id, "summarise briefly")

    assert list(events[0].started.user_message.attachment_ids) == [attachment_id]
    listed = await branch(replica, conversation_id)
    assert (listed[0].content, list(listed[0].attachment_ids)) == ("summarise briefly", [attachment_id])


async def test_correcting_a_reply_streams_the_correction_without_the_model(replica: Replica) -> None:
    conversation_id = (await replica.conversation("alice")).conversation_id
    asked = await send(replica, conversation_id, "2 + 2?")

    events = await edit(replica, asked.message.message_id, "4")

    assert kinds(events) == ["started", "delta", "completed"]
    correction = events[-1].completed.message
    assert (correction.content, correction.status, correction.role) == (
        "4",
        pb.MESSAGE_STATUS_COMPLETED,
        pb.ROLE_ASSISTANT,
    )
    assert events[1].delta == pb.ReplyDelta(text="4", offset=0, generation=1)
    assert events[0].started.user_message == asked.user_message
    listed = await branch(replica, conversation_id)
    assert contents(listed) == ["2 + 2?", "4"] and listed[1].sibling_count == 2


async def test_switching_branches_and_deleting_messages(replica: Replica) -> None:
    auth = await replica.auth("alice")
    conversation_id = (await replica.conversation("alice")).conversation_id
    asked = await send(replica, conversation_id, "hello")
    deeper = await send(replica, conversation_id, "deeper")
    again = (await regenerate(replica, asked.message.message_id))[-1].completed.message

    switched = await replica.stub.SetCurrentBranch(
        pb.SetCurrentBranchRequest(conversation_id=conversation_id, message_id=asked.message.message_id),
        metadata=auth,
    )
    assert switched.conversation.current_message_id == deeper.message.message_id  # the newest leaf under it
    assert len(await branch(replica, conversation_id)) == 4

    deleted = await replica.stub.DeleteMessage(
        pb.DeleteMessageRequest(message_id=asked.message.message_id), metadata=auth
    )
    assert deleted.deleted_count == 3
    assert deleted.conversation.current_message_id == again.message_id
    got = await replica.stub.GetConversation(pb.GetConversationRequest(conversation_id=conversation_id), metadata=auth)
    assert got.conversation.current_message_id == again.message_id
    assert [m.message_id for m in await branch(replica, conversation_id)] == [
        asked.user_message.message_id,
        again.message_id,
    ]
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await replica.stub.DeleteMessage(pb.DeleteMessageRequest(message_id=asked.message.message_id), metadata=auth)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


async def test_deleting_under_a_reply_in_flight_cancels_it_first(slow_replica: Replica) -> None:
    replica, auth = slow_replica, await slow_replica.auth("alice")
    conversation_id = (await replica.conversation("alice")).conversation_id
    call = replica.stub.StreamReply(
        pb.StreamReplyRequest(conversation_id=conversation_id, content="a long story"), metadata=auth
    )
    started = (await call.read()).event.started
    await call.read()  # a first delta: it is generating

    deleted = await replica.stub.DeleteMessage(
        pb.DeleteMessageRequest(message_id=started.user_message.message_id), metadata=auth
    )

    assert (deleted.deleted_count, deleted.conversation.current_message_id) == (2, "")
    async with asyncio.timeout(WAIT):
        rest, _ = await collect(call)
    assert rest[-1].completed.message.status == pb.MESSAGE_STATUS_CANCELLED
    assert await branch(replica, conversation_id) == []
    await send(replica, conversation_id, "a new start")  # the conversation is free again
    assert len(await branch(replica, conversation_id)) == 2


async def test_the_branches_stay_as_they_are_while_a_reply_generates(slow_replica: Replica) -> None:
    replica, auth = slow_replica, await slow_replica.auth("alice")
    conversation_id = (await replica.conversation("alice")).conversation_id
    asked = await send(replica, conversation_id, "hello")
    call = replica.stub.StreamReply(
        pb.StreamReplyRequest(conversation_id=conversation_id, content="go on"), metadata=auth
    )
    started = (await call.read()).event.started

    attempts: list[Coroutine[Any, Any, Any]] = [
        regenerate(replica, asked.message.message_id),
        edit(replica, asked.user_message.message_id, "hi"),
        edit(replica, asked.message.message_id, "fixed"),
        replica.stub.SetCurrentBranch(
            pb.SetCurrentBranchRequest(conversation_id=conversation_id, message_id=asked.message.message_id),
            metadata=auth,
        ),
    ]
    for attempt in attempts:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await attempt
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    call.cancel()
    final = await wait_for_status(replica, "alice", conversation_id, started.assistant_message.message_id)
    assert final.status == pb.MESSAGE_STATUS_COMPLETED and final.parent_message_id == started.user_message.message_id


async def test_bad_tree_requests_get_precise_statuses(replica: Replica) -> None:
    alice, bob = await replica.auth("alice"), await replica.auth("bob")
    conversation_id = (await replica.conversation("alice")).conversation_id
    other_id = (await replica.conversation("alice")).conversation_id
    asked = await send(replica, conversation_id, "hello")

    async def refused(call: Coroutine[Any, Any, Any]) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call
        return error.value

    error = await refused(replica.stub.DeleteMessage(pb.DeleteMessageRequest(message_id="nope"), metadata=alice))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "message_id" in violations(error)
    error = await refused(edit(replica, asked.message.message_id, ""))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "content" in violations(error)
    error = await refused(regenerate(replica, str(uuid.uuid4())))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    error = await refused(
        replica.stub.DeleteMessage(pb.DeleteMessageRequest(message_id=asked.message.message_id), metadata=bob)
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    error = await refused(
        replica.stub.SetCurrentBranch(
            pb.SetCurrentBranchRequest(conversation_id=other_id, message_id=asked.message.message_id), metadata=alice
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "message_id" in violations(error)
    error = await refused(
        replica.stub.ListMessages(
            pb.ListMessagesRequest(conversation_id=other_id, branch_message_id=asked.message.message_id),
            metadata=alice,
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "branch_message_id" in violations(error)
    assert len(await branch(replica, conversation_id)) == 2  # nothing changed


async def test_search_and_export_follow_the_branches(replica: Replica) -> None:
    auth = await replica.auth("alice")
    conversation_id = (await replica.conversation("alice", title="Sea")).conversation_id
    asked = await send(replica, conversation_id, "tell me about narwhals")
    edited = (await edit(replica, asked.user_message.message_id, "narwhals, again"))[0].started.user_message

    found = await replica.stub.SearchMessages(pb.SearchMessagesRequest(query="narwhals"), metadata=auth)
    assert {r.message.message_id: r.on_current_branch for r in found.results} == {
        asked.user_message.message_id: False,
        edited.message_id: True,
    }

    async def exported(branch_message_id: str = "") -> list[str]:
        request = pb.ExportConversationRequest(
            conversation_id=conversation_id, format=pb.EXPORT_FORMAT_JSON, branch_message_id=branch_message_id
        )
        data = b"".join([r.data async for r in replica.stub.ExportConversation(request, metadata=auth)])
        return [m["content"] for m in json.loads(data)["messages"]]

    assert (await exported())[0] == "narwhals, again"
    assert (await exported(asked.message.message_id)) == ["tell me about narwhals", asked.message.content]


# ---------------------------------------------------------------------------------------------- the property


class RpcDriver:
    """TreeDriver over a real replica's RPCs (one conversation of alice's)."""

    def __init__(self, replica: Replica, auth: tuple[tuple[str, str], ...], provider: NumberedProvider) -> None:
        self.replica = replica
        self.stub = replica.stub
        self.auth = auth
        self.prompts = provider.prompts
        self.conversation_id = ""

    async def _conversation(self) -> str:
        if not self.conversation_id:
            created = await self.stub.CreateConversation(
                pb.CreateConversationRequest(model="scripted"), metadata=self.auth
            )
            self.conversation_id = created.conversation.conversation_id
        return self.conversation_id

    async def _events(self, call: grpc.aio.UnaryStreamCall) -> list[pb.ReplyEvent]:
        events, _ = await collect(call)
        return events

    async def send(self, text: str) -> Made:
        request = pb.SendMessageRequest(conversation_id=await self._conversation(), content=text)
        sent = await self.stub.SendMessage(request, metadata=self.auth)
        return Made(sent.user_message.message_id, sent.message.message_id, sent.message.content)

    async def regenerate(self, message_id: str) -> Made:
        request = pb.RegenerateReplyRequest(message_id=message_id, request_id=str(uuid.uuid4()))
        reply = (await self._events(self.stub.RegenerateReply(request, metadata=self.auth)))[-1].completed.message
        return Made(reply.message_id, reply.message_id, reply.content)

    async def edit(self, message_id: str, text: str, *, correction: bool) -> Made:
        request = pb.EditMessageRequest(message_id=message_id, content=text, request_id=str(uuid.uuid4()))
        events = await self._events(self.stub.EditMessage(request, metadata=self.auth))
        last = events[-1].completed.message
        if correction:
            return Made(last.message_id)
        return Made(events[0].started.user_message.message_id, last.message_id, last.content)

    async def switch(self, message_id: str) -> str:
        request = pb.SetCurrentBranchRequest(conversation_id=await self._conversation(), message_id=message_id)
        return (await self.stub.SetCurrentBranch(request, metadata=self.auth)).conversation.current_message_id

    async def delete(self, message_id: str) -> tuple[str, int]:
        deleted = await self.stub.DeleteMessage(pb.DeleteMessageRequest(message_id=message_id), metadata=self.auth)
        return deleted.conversation.current_message_id, deleted.deleted_count

    async def branch(self) -> list[Listed]:
        return [
            Listed(
                m.message_id,
                m.parent_message_id,
                "user" if m.role == pb.ROLE_USER else "assistant",
                m.content,
                m.sibling_count,
                m.sibling_index,
                m.previous_sibling_id,
                m.next_sibling_id,
            )
            for m in await branch(self.replica, await self._conversation())
        ]

    async def current(self) -> str:
        request = pb.GetConversationRequest(conversation_id=await self._conversation())
        return (await self.stub.GetConversation(request, metadata=self.auth)).conversation.current_message_id

    async def search(self, word: str) -> dict[str, bool]:
        found = await self.stub.SearchMessages(pb.SearchMessagesRequest(query=word, page_size=1000), metadata=self.auth)
        mine = await self._conversation()
        return {r.message.message_id: r.on_current_branch for r in found.results if r.message.conversation_id == mine}

    async def close(self) -> None:
        if self.conversation_id:
            request = pb.DeleteConversationRequest(conversation_id=self.conversation_id)
            await self.stub.DeleteConversation(request, metadata=self.auth)


def test_the_tree_stays_consistent_over_any_sequence_of_rpcs(database_url: str) -> None:
    runner = LoopThread()
    provider = NumberedProvider()
    replica_context = running_replica(settings_for(database_url, rate_limit_per_minute=0), provider)
    replica = runner.run(replica_context.__aenter__())
    try:
        auth = runner.run(replica.auth("alice"))

        def run(coroutine: Coroutine[Any, Any, Any]) -> Any:
            return runner.run(coroutine, WAIT)

        run_state_machine_as_test(
            lambda: TreeMachine(RpcDriver(replica, auth, provider), run),
            settings=settings(
                max_examples=20, stateful_step_count=15, deadline=None, suppress_health_check=list(HealthCheck)
            ),
        )
    finally:
        runner.run(replica_context.__aexit__(None, None, None))
        runner.close()
