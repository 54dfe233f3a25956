"""Oversized values from callers, on both databases: durations past what the service can represent, strings
longer than the columns that keep them, and huge values that errors would repeat. Each gets a precise status
(INVALID_ARGUMENT naming the field, or the real code of the error), never INTERNAL, and nothing is stored."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf import duration_pb2, field_mask_pb2

from chat.v1 import admin_pb2 as apb
from chat.v1 import admin_pb2_grpc
from chat.v1 import chat_pb2 as pb
from service.auth.principals import USER_ID_MAX
from service.llm.fake import FakeProvider
from service.storage.tables import metadata
from tests.integration.coach_stream import CoachCall, start
from tests.integration.harness import Replica, running_replica, settings_for
from tests.integration.hostile import CLIENT_METADATA_LIMIT, UnlistedProvider, status_size
from tests.integration.rpc_errors import error_info, violations

pytestmark = pytest.mark.timeout(60)
PERSONA = "english_buddy"
# The largest a google.protobuf.Duration may be (its documented range: about 10,000 years either way).
DURATION_SECONDS_MAX = 315_576_000_000
ECHO_MAX = 64  # characters of a caller's value that an error may repeat


@pytest.fixture
async def unlisted(database_url: str) -> AsyncIterator[Replica]:
    """A replica whose model provider cannot list its models, so any model name is accepted."""
    async with running_replica(settings_for(database_url, speech_provider="none"), UnlistedProvider()) as running:
        yield running


@pytest.fixture
async def listed(database_url: str) -> AsyncIterator[Replica]:
    """A replica whose model provider lists its models (unknown names are FAILED_PRECONDITION)."""
    async with running_replica(settings_for(database_url, speech_provider="none"), FakeProvider()) as running:
        yield running


async def refused(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    return error.value


async def coach_refused(replica: Replica, **fields: object) -> grpc.aio.AioRpcError:
    call = CoachCall(replica.stub, await replica.auth("alice"))
    await call.send(start(**fields))
    return await call.error()


# ---------------------------------------------------------------------------------------------- durations (F1)


async def test_a_coaching_duration_outside_the_duration_range_is_invalid(unlisted: Replica) -> None:
    # Each of these once ended the stream INTERNAL (an OverflowError converting to a timedelta) or was taken
    # as a valid limit although it is no valid Duration (nanos out of range or of the other sign).
    for seconds, nanos in [
        (2**63 - 1, 0),
        (-(2**63), 0),
        (2**62, 0),
        (DURATION_SECONDS_MAX + 1, 0),
        (-DURATION_SECONDS_MAX - 1, 0),
        (1, -5),
        (-1, 5),
        (0, 10**9),
    ]:
        error = await coach_refused(
            unlisted, persona=PERSONA, max_duration=duration_pb2.Duration(seconds=seconds, nanos=nanos)
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (seconds, nanos, error.details())
        assert "start.max_duration" in violations(error), (seconds, nanos)
    assert await conversations(unlisted, "alice") == []  # no session (or its conversation) was made


async def test_the_longest_valid_duration_is_a_limit(unlisted: Replica) -> None:
    call = CoachCall(unlisted.stub, await unlisted.auth("alice"))
    longest = duration_pb2.Duration(seconds=DURATION_SECONDS_MAX, nanos=999_999_999)
    started = await call.begin(persona=PERSONA, max_duration=longest)
    assert started.session.max_duration.seconds == DURATION_SECONDS_MAX
    assert 0 < started.session.time_left.seconds <= DURATION_SECONDS_MAX


# ---------------------------------------------------------------------------------------------- columns (F10)


@dataclass(frozen=True)
class Probe:
    """Sends `value` into one stored string; `field` is the violation expected when it is too long (None
    where the service names it otherwise), `fits` whether a value of exactly the column's size is stored."""

    send: Callable[[Replica, str], Awaitable[object]]
    field: str | None
    fits: bool = True


async def _create(replica: Replica, **fields: str) -> object:
    return await replica.conversation("alice", **fields)


async def _update(replica: Replica, name: str, value: str) -> object:
    cid = (await replica.conversation("alice")).conversation_id
    request = pb.UpdateConversationRequest(
        conversation=pb.Conversation(conversation_id=cid, **{name: value}),
        update_mask=field_mask_pb2.FieldMask(paths=[name]),
    )
    return await replica.stub.UpdateConversation(request, metadata=await replica.auth("alice"))


async def _coach(replica: Replica, persona: str) -> object:
    call = CoachCall(replica.stub, await replica.auth("alice"))
    return await call.begin(persona=persona)


async def _send(replica: Replica, request_id: str) -> object:
    cid = (await replica.conversation("alice")).conversation_id
    request = pb.SendMessageRequest(conversation_id=cid, content="hi", request_id=request_id)
    return await replica.stub.SendMessage(request, metadata=await replica.auth("alice"))


async def _upload(replica: Replica, **metadata: str) -> object:
    fields = {"filename": "f.txt", **metadata}
    messages = [
        pb.UploadAttachmentRequest(metadata=pb.AttachmentMetadata(**fields)),
        pb.UploadAttachmentRequest(data=b"x"),
    ]
    return await replica.stub.UploadAttachment(iter(messages), metadata=await replica.auth("alice"))


async def _share(replica: Replica, user_id: str) -> object:
    cid = (await replica.conversation("alice")).conversation_id
    request = pb.ShareConversationRequest(conversation_id=cid, user_id=user_id)
    return await replica.stub.ShareConversation(request, metadata=await replica.auth("alice"))


async def _key(replica: Replica, **fields: object) -> object:
    admin = (("authorization", f"Bearer {await replica.key('root', admin=True)}"),)
    request = apb.CreateApiKeyRequest(**{"user_id": "someone", **fields})  # type: ignore[arg-type]
    return await admin_pb2_grpc.AdminServiceStub(replica.channel).CreateApiKey(request, metadata=admin)


# Every bounded string column a caller's value reaches, and the requests that put one there.
CALLER_GIVEN: dict[tuple[str, str], list[Probe]] = {
    ("conversations", "title"): [
        Probe(lambda r, v: _create(r, title=v), "title"),
        Probe(lambda r, v: _update(r, "title", v), "conversation.title"),
    ],
    ("conversations", "model"): [
        Probe(lambda r, v: _create(r, model=v), "model"),
        Probe(lambda r, v: _update(r, "model", v), "conversation.model"),
    ],
    ("conversations", "persona"): [  # only catalogue personas are accepted, whatever their length
        Probe(lambda r, v: _create(r, persona=v), "persona", fits=False),
        Probe(lambda r, v: _update(r, "persona", v), "conversation.persona", fits=False),
    ],
    ("coaching_sessions", "persona"): [Probe(_coach, "start.persona", fits=False)],
    ("messages", "request_id"): [Probe(_send, "request_id")],
    ("api_keys", "user_id"): [Probe(lambda r, v: _key(r, user_id=v), "user_id")],
    # AdminService names the field `name` for the request's `display_name` (service/auth/api_keys.py).
    ("api_keys", "name"): [Probe(lambda r, v: _key(r, display_name=v), None)],
    ("api_keys", "scopes"): [Probe(lambda r, v: _key(r, scopes=[v]), "scopes", fits=False)],
    ("attachments", "filename"): [Probe(lambda r, v: _upload(r, filename=v), "metadata.filename")],
    # Only media types are accepted (type/subtype, each at most 63 characters), whatever their length.
    ("attachments", "content_type"): [
        Probe(lambda r, v: _upload(r, content_type=v), "metadata.content_type", fits=False)
    ],
    ("conversation_shares", "user_id"): [Probe(_share, "user_id")],
}
# The other bounded string columns, and why no caller's value can overflow them.
NOT_FROM_CALLERS = {
    ("api_keys", "id"): "made by the service",
    ("api_keys", "secret_hash"): "a SHA-256 hex digest",
    ("conversations", "id"): "made by the service",
    (
        "conversations",
        "owner",
    ): "the caller's user id: at most USER_ID_MAX (principals.check_user_id, keys and JWTs)",
    ("messages", "id"): "made by the service",
    ("messages", "conversation_id"): "a conversation's id",
    ("messages", "owner"): "the caller's user id",
    ("messages", "role"): "an enum",
    ("messages", "status"): "an enum",
    ("messages", "model"): "the conversation's model (conversations.model)",
    ("messages", "finish_reason"): "an enum",
    ("messages", "error_message"): "a domain error's message, bounded (test_a_failed_reply_keeps_its_error_bounded)",
    ("messages", "error_reason"): "a domain error's reason: one of the short constants in service/domain/__init__.py",
    ("messages", "continued_at"): "made by the service: at most CHAT_MAX_CONTINUATIONS (5) 'generation:offset' pairs",
    ("messages", "lease_owner"): "the replica id, from configuration (at most 200 characters: Settings)",
    ("messages", "parent_id"): "a stored message's id (caller-given ids are checked UUIDs of stored messages)",
    ("conversations", "current_message_id"): "a stored message's id",
    ("coaching_sessions", "id"): "made by the service",
    ("coaching_sessions", "owner"): "the caller's user id",
    ("coaching_sessions", "conversation_id"): "a conversation's id",
    ("coaching_sessions", "stage"): "an enum",
    ("coaching_sessions", "end_reason"): "an enum",
    ("attachments", "id"): "made by the service",
    ("attachments", "owner"): "the caller's user id",
    (
        "attachments",
        "sniffed_content_type",
    ): "a media type from puremagic's table, or text/plain, or application/octet-stream",
    ("attachments", "sha256"): "a SHA-256 hex digest",
    ("attachment_chunks", "key"): "an attachment's id",
    ("message_attachments", "message_id"): "a message's id",
    ("message_attachments", "attachment_id"): "an attachment's id (checked as a UUID, then found)",
    ("conversation_shares", "conversation_id"): "a conversation's id",
    ("conversation_shares", "role"): "an enum",
    ("service_secrets", "name"): "made by the service",
    ("service_secrets", "value"): "made by the service",
}


def bounded_string_columns() -> dict[tuple[str, str], int]:
    return {
        (table.name, column.name): column.type.length
        for table in metadata.sorted_tables
        for column in table.columns
        if isinstance(column.type, sa.String) and column.type.length
    }


def test_every_bounded_string_column_is_accounted_for() -> None:
    # A new column must say where its values come from; a caller's then needs a probe below.
    assert set(bounded_string_columns()) == set(CALLER_GIVEN) | set(NOT_FROM_CALLERS)
    assert bounded_string_columns()[("conversations", "owner")] >= USER_ID_MAX


@pytest.mark.parametrize("column", sorted(CALLER_GIVEN), ids="{0[0]}.{0[1]}".format)
async def test_a_value_longer_than_its_column_is_invalid(unlisted: Replica, column: tuple[str, str]) -> None:
    size = bounded_string_columns()[column]
    letter = "r" if column == ("messages", "request_id") else "é"  # request ids are ASCII; columns count characters
    for probe in CALLER_GIVEN[column]:
        error = await refused(probe.send(unlisted, letter * (size + 1)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (column, error.details())
        if probe.field is not None:
            assert probe.field in violations(error), column
        if probe.fits:
            await probe.send(unlisted, letter * size)  # the longest value that fits is stored


async def test_a_long_model_name_is_refused_before_storage_while_models_cannot_be_listed(unlisted: Replica) -> None:
    error = await refused(unlisted.conversation("alice", model="m" * 300))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "model" in violations(error)
    assert await conversations(unlisted, "alice") == []


# ---------------------------------------------------------------------------------------------- echoes (F14)

HUGE = ["p" * 8000, "😀" * 8000, "\x01" * 8000, "%" * 8000]


def assert_bounded(error: grpc.aio.AioRpcError, code: grpc.StatusCode, value: str, *, echo: int = ECHO_MAX) -> None:
    """The real code, and a status far below the client's metadata limit that repeats at most `echo`
    characters of the value."""
    assert error.code() == code, error.details()
    assert status_size(error) <= CLIENT_METADATA_LIMIT // 2, status_size(error)
    assert value[: echo + 1] not in (error.details() or "")
    for shown in error_info(error).metadata.values():
        assert len(shown) <= ECHO_MAX


async def test_errors_repeat_only_the_start_of_a_huge_value(listed: Replica) -> None:
    auth = await listed.auth("alice")
    cid = (await listed.conversation("alice")).conversation_id
    for value in HUGE:
        for call in (
            lambda v: listed.stub.CreateConversation(pb.CreateConversationRequest(persona=v), metadata=auth),
            lambda v: listed.stub.UpdateConversation(
                pb.UpdateConversationRequest(
                    conversation=pb.Conversation(conversation_id=cid, persona=v),
                    update_mask=field_mask_pb2.FieldMask(paths=["persona"]),
                ),
                metadata=auth,
            ),
            lambda v: listed.stub.UpdateConversation(
                pb.UpdateConversationRequest(
                    conversation=pb.Conversation(conversation_id=cid),
                    update_mask=field_mask_pb2.FieldMask(paths=[v, v[:4000], v[:100]]),
                ),
                metadata=auth,
            ),
        ):
            assert_bounded(await refused(call(value)), grpc.StatusCode.INVALID_ARGUMENT, value)
        # service/auth/api_keys.py repeats unknown scopes whole; the error map still cuts the description to 200 bytes.
        scopes = await refused(_key(listed, scopes=[value, value[:3000], value[:2000]]))
        assert_bounded(scopes, grpc.StatusCode.INVALID_ARGUMENT, value, echo=200)
        assert_bounded(await coach_refused(listed, persona=value), grpc.StatusCode.INVALID_ARGUMENT, value)
        # A name that fits its column but is no model the provider offers: FAILED_PRECONDITION, as it is.
        unknown = await refused(listed.conversation("alice", model=value[:200]))
        assert_bounded(unknown, grpc.StatusCode.FAILED_PRECONDITION, value)
        assert error_info(unknown).reason == "MODEL_NOT_FOUND" and "…" in (unknown.details() or "")
    assert [c.conversation_id for c in await conversations(listed, "alice")] == [cid]


async def test_a_failed_reply_keeps_its_error_bounded(unlisted: Replica) -> None:
    # The model's name was accepted while models could not be listed; the reply then fails MODEL_NOT_FOUND,
    # and its error (which repeats the name) is stored with the reply: it must fit, or the reply never ends.
    auth = await unlisted.auth("alice")
    for model in ("\x01" * 200, "😀" * 200):
        cid = (await unlisted.conversation("alice", model=model)).conversation_id
        send = unlisted.stub.SendMessage(pb.SendMessageRequest(conversation_id=cid, content="hi"), metadata=auth)
        async with asyncio.timeout(15):  # a reply whose end cannot be stored never ends
            error = await refused(send)
        assert_bounded(error, grpc.StatusCode.FAILED_PRECONDITION, model)
        listed = await unlisted.stub.ListMessages(pb.ListMessagesRequest(conversation_id=cid), metadata=auth)
        reply = listed.messages[-1]
        assert reply.status == pb.MESSAGE_STATUS_FAILED
        assert 0 < len(reply.error_message) <= 500 and "…" in reply.error_message


async def conversations(replica: Replica, user: str) -> list[pb.Conversation]:
    listed = await replica.stub.ListConversations(pb.ListConversationsRequest(), metadata=await replica.auth(user))
    return list(listed.conversations)
