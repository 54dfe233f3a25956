"""The whole service on the bundled local model (what `make run` serves): a model worker that dies in the
middle of a reply ends that reply FAILED with its partial text and a non-OK stream; the service stays SERVING
and the next reply works."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from chat.v1 import chat_pb2 as pb
from service.llm.local import LocalProvider
from tests.integration.harness import Replica, running_replica, settings_for
from tests.integration.rpc_errors import error_info

pytestmark = [pytest.mark.local_model, pytest.mark.timeout(120)]


@pytest.fixture
async def replica(database_url: str) -> AsyncIterator[Replica]:
    settings = settings_for(database_url, llm_provider="local", local_context_tokens=2048, max_reply_tokens=400)
    async with running_replica(settings) as running:
        yield running


def local_provider(replica: Replica) -> LocalProvider:
    provider = replica.app.deps.provider
    assert isinstance(provider, LocalProvider)
    return provider


async def test_make_run_model_streams_a_stored_reply(replica: Replica) -> None:
    conversation = await replica.conversation("alice")
    call = replica.stub.StreamReply(
        pb.StreamReplyRequest(conversation_id=conversation.conversation_id, content="What is the capital of France?"),
        metadata=await replica.auth("alice"),
    )
    events = [response.event async for response in call]

    final = events[-1].completed.message
    assert final.status == pb.MESSAGE_STATUS_COMPLETED and final.model == "smollm2-135m"
    assert final.content.strip() and final.content == "".join(e.delta.text for e in events if e.HasField("delta"))
    assert final.usage.completion_tokens > 0


async def test_a_worker_killed_mid_reply_fails_that_reply_and_the_service_answers_the_next(replica: Replica) -> None:
    conversation = await replica.conversation("alice")
    metadata = await replica.auth("alice")
    call = replica.stub.StreamReply(
        pb.StreamReplyRequest(
            conversation_id=conversation.conversation_id,
            content="Count from 1 to 300, separated by commas. Do not stop early.",
        ),
        metadata=metadata,
    )
    received, message_id, killed_pid = "", "", None

    async def read_and_kill_the_worker() -> None:
        nonlocal received, message_id, killed_pid
        async for response in call:
            event = response.event
            if event.HasField("started"):
                message_id = event.started.assistant_message.message_id
            received += event.delta.text
            if len(received) > 10 and killed_pid is None:
                killed_pid = local_provider(replica).worker_pid
                assert killed_pid is not None
                os.kill(killed_pid, signal.SIGSEGV)

    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await read_and_kill_the_worker()
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(failed.value).reason == "MODEL_FAILED"
    assert "crashed (SIGSEGV)" in (failed.value.details() or "")

    resumed = replica.stub.ResumeReply(pb.ResumeReplyRequest(message_id=message_id), metadata=metadata)
    stored = (await resumed.read()).event.started.assistant_message
    assert stored.status == pb.MESSAGE_STATUS_FAILED
    assert stored.content == received  # the partial text, exactly what the client saw
    assert "crashed" in stored.error_message

    health = health_pb2_grpc.HealthStub(replica.channel)
    assert (await health.Check(health_pb2.HealthCheckRequest())).status == health_pb2.HealthCheckResponse.SERVING
    reply = await asyncio.wait_for(
        replica.stub.SendMessage(
            pb.SendMessageRequest(conversation_id=conversation.conversation_id, content="Say hello."),
            metadata=metadata,
        ),
        60,
    )
    assert reply.message.status == pb.MESSAGE_STATUS_COMPLETED and reply.message.content
    assert local_provider(replica).worker_pid not in (None, killed_pid)
