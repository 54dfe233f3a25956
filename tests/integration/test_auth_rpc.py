"""Authentication, health and reflection over a real server; credentials re-checked on long-lived streams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from chat.v1 import admin_pb2, admin_pb2_grpc
from chat.v1 import chat_pb2 as pb
from service.auth.api_keys import REVOKED_CHANNEL
from tests.conftest import _truncate
from tests.integration.coach_stream import CoachCall, turn
from tests.integration.harness import Replica, running_replica, settings_for


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("authorization", "Bearer"),),
        (("authorization", "Basic dXNlcjpwYXNz"),),
        (("authorization", "Bearer not-a-key"),),
        (("authorization", "Bearer csk_0000000000000000_wrong"),),
    ],
)
async def test_bad_credentials_are_unauthenticated(replica: Replica, metadata: tuple[tuple[str, str], ...]) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await replica.stub.ListConversations(pb.ListConversationsRequest(), metadata=metadata)
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as streaming:
        await replica.stub.ResumeReply(pb.ResumeReplyRequest(message_id="x"), metadata=metadata).read()
    assert streaming.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_wrong_secret_for_a_real_key_is_refused(replica: Replica) -> None:
    key = await replica.key("alice")
    forged = key[: key.rindex("_") + 1] + "A" * 43
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await replica.stub.ListConversations(
            pb.ListConversationsRequest(), metadata=(("authorization", f"Bearer {forged}"),)
        )
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_revoked_key_is_refused_at_once(replica: Replica) -> None:
    key = await replica.key("alice")
    auth = (("authorization", f"Bearer {key}"),)
    await replica.stub.ListConversations(pb.ListConversationsRequest(), metadata=auth)
    await replica.app.deps.use_cases.api_keys.revoke(key.split("_")[1])
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await replica.stub.ListConversations(pb.ListConversationsRequest(), metadata=auth)
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_health_and_reflection_need_no_credentials(replica: Replica) -> None:
    health = health_pb2_grpc.HealthStub(replica.channel)
    for service in ("", "chat.v1.ChatService"):
        response = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING

    reflection = reflection_pb2_grpc.ServerReflectionStub(replica.channel)
    responses = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name async for r in responses for s in r.list_services_response.service}
    assert {"chat.v1.ChatService", "grpc.health.v1.Health"} <= names


# ---------------------------------------------------------------------------------------------- long-lived streams
# A stream is authorised per message, not once per call: every message the client sends on it (a Coach turn
# or end) and every event the server streams re-checks the credential.

READ_WITHIN = 15.0


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def revoke(replica: Replica, key: str) -> None:
    """Through AdminService, as an operator would."""
    admin = admin_pb2_grpc.AdminServiceStub(replica.channel)
    root = bearer(await replica.key("root", admin=True))
    await admin.RevokeApiKey(admin_pb2.RevokeApiKeyRequest(key_id=key.split("_")[1]), metadata=root)


async def reply_outcome(call: grpc.aio.UnaryStreamCall) -> tuple[bool, grpc.aio.AioRpcError | None]:
    """Read a reply stream to its end: (whether it completed, its error)."""
    completed = False
    async with asyncio.timeout(READ_WITHIN):
        try:
            while (response := await call.read()) is not grpc.aio.EOF:
                completed = completed or response.event.HasField("completed")
        except grpc.aio.AioRpcError as error:
            return completed, error
    return completed, None


@pytest.fixture
async def slow_replies(database_url: str) -> AsyncIterator[Replica]:
    """Replies of ~10 s (500 tokens at 50 tokens/s): a revocation lands in the middle of one."""
    settings = settings_for(database_url, fake_tokens_per_second=50, fake_reply_tokens=500)
    async with running_replica(settings) as running:
        yield running


async def test_a_key_revoked_mid_stream_ends_the_coach_stream_at_the_next_turn(replica: Replica) -> None:
    key = await replica.key("alice")
    call = CoachCall(replica.stub, bearer(key))
    await call.begin(persona="english_buddy")
    await call.ask(turn("Hello!"), "turn_completed")

    await revoke(replica, key)
    await call.send(turn("Are you still there?"))
    error = await call.error()

    assert error.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_a_key_revoked_mid_reply_ends_reply_streams_at_the_next_event(slow_replies: Replica) -> None:
    key = await slow_replies.key("alice")
    conversation = await slow_replies.conversation("alice")
    streamed = slow_replies.stub.StreamReply(
        pb.StreamReplyRequest(conversation_id=conversation.conversation_id, content="a long story"),
        metadata=bearer(key),
    )
    message_id = (await streamed.read()).event.started.assistant_message.message_id
    resumed = slow_replies.stub.ResumeReply(pb.ResumeReplyRequest(message_id=message_id), metadata=bearer(key))
    assert (await resumed.read()).event.HasField("started")
    assert (await streamed.read()).event.HasField("delta")  # the reply is generating

    await revoke(slow_replies, key)

    for call in (streamed, resumed):
        completed, error = await reply_outcome(call)
        assert not completed
        assert error is not None and error.code() is grpc.StatusCode.UNAUTHENTICATED


@pytest.fixture
async def two_replicas(postgres_database: str) -> AsyncIterator[tuple[Replica, Replica]]:
    await _truncate(postgres_database)
    async with (
        running_replica(settings_for(postgres_database, replica_id="a")) as a,
        running_replica(settings_for(postgres_database, replica_id="b")) as b,
    ):
        yield a, b


@pytest.mark.postgres
async def test_a_key_revoked_on_another_replica_ends_a_coach_stream_at_the_next_turn(
    two_replicas: tuple[Replica, Replica],
) -> None:
    a, b = two_replicas
    key = await a.key("alice")
    call = CoachCall(a.stub, bearer(key))
    await call.begin(persona="english_buddy")
    await call.ask(turn("Hello!"), "turn_completed")  # A verified the key and holds it in its cache
    heard = asyncio.Event()
    # Subscribed after A's own handler, so by the time this runs A has already forgotten the key.
    a.app.deps.notifications.subscribe(REVOKED_CHANNEL, lambda _key_id: heard.set())

    await revoke(b, key)
    await asyncio.wait_for(heard.wait(), READ_WITHIN)
    await call.send(turn("Are you still there?"))
    error = await call.error()

    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
