"""Authentication, health and reflection over a real server."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from chat.v1 import chat_pb2 as pb
from tests.integration.harness import Replica


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
    await replica.app.deps.api_keys.revoke(key.split("_")[1])
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
