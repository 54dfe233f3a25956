"""Traces (in-memory exporter), the Prometheus endpoint, and what the access log holds (and never holds)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from chat.v1 import chat_pb2 as pb
from chat_client.errors import from_rpc_error
from service import logs, telemetry
from tests.integration.harness import Replica, running_replica, secret_of, settings_for
from tests.integration.hostile import AccessLog, Entry
from tests.net import free_port


class _Switchable(SimpleSpanProcessor):
    """Records only while a test of this module runs (a global TracerProvider cannot be replaced)."""

    enabled = False

    def on_end(self, span: ReadableSpan) -> None:
        if self.enabled:
            super().on_end(span)


_EXPORTER = InMemorySpanExporter()
_PROCESSOR = _Switchable(_EXPORTER)


@pytest.fixture(autouse=True)
def sdk_tracing() -> None:
    """The SDK's tracer provider, installed before any replica of these tests is built: a replica instruments
    its libraries (SQL, HTTP) only when tracing is on."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = telemetry.tracer_provider()
        provider.add_span_processor(_PROCESSOR)
        trace.set_tracer_provider(provider)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    _EXPORTER.clear()
    _PROCESSOR.enabled = True
    try:
        yield _EXPORTER
    finally:
        _PROCESSOR.enabled = False
        _EXPORTER.clear()


TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


def traced(auth: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    return (*auth, ("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"))


def rpc_span(finished: tuple[ReadableSpan, ...], method: str) -> ReadableSpan:
    matching = [s for s in finished if s.name == f"/chat.v1.ChatService/{method}"]
    assert len(matching) == 1, [s.name for s in finished]
    return matching[0]


async def wait_for_span(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    for _ in range(200):  # bounded: the generation's span ends just after the reply is stored
        found = [s for s in exporter.get_finished_spans() if s.name == name]
        if found:
            return found[0]
        await asyncio.sleep(0.025)
    raise AssertionError(f"no span {name!r} in {[s.name for s in exporter.get_finished_spans()]}")


async def test_rpc_span_continues_the_callers_trace_with_db_and_genai_children(
    replica: Replica, spans: InMemorySpanExporter
) -> None:
    auth = await replica.auth("alice")
    conversation = await replica.conversation("alice")
    call = replica.stub.StreamReply(
        pb.StreamReplyRequest(conversation_id=conversation.conversation_id, content="hello"), metadata=traced(auth)
    )
    events = [r.event async for r in call]
    completed = events[-1].completed.message
    generation = await wait_for_span(spans, "chat fake-echo")
    finished = spans.get_finished_spans()

    server = rpc_span(finished, "StreamReply")
    assert server.kind is SpanKind.SERVER
    assert f"{server.context.trace_id:032x}" == TRACE_ID
    assert server.parent is not None and f"{server.parent.span_id:016x}" == PARENT_ID
    assert server.attributes is not None and server.attributes["rpc.method"] == "StreamReply"
    # Database work is a child of the RPC span.
    db = [s for s in finished if s.parent is not None and s.parent.span_id == server.context.span_id]
    assert any(s.attributes and "db.system" in str(dict(s.attributes)) for s in db), [s.name for s in db]

    # One GenAI span per model call, in a trace of its own linked to the RPC that started it.
    assert generation.kind is SpanKind.INTERNAL
    assert generation.context.trace_id != server.context.trace_id
    assert [link.context.span_id for link in generation.links] == [server.context.span_id]
    attributes = dict(generation.attributes or {})
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.provider.name"] == "fake"
    assert attributes["gen_ai.request.model"] == "fake-echo"
    assert attributes["gen_ai.conversation.id"] == conversation.conversation_id
    assert attributes["gen_ai.usage.output_tokens"] == completed.usage.completion_tokens > 0
    assert attributes["gen_ai.usage.input_tokens"] == completed.usage.prompt_tokens
    assert list(attributes["gen_ai.response.finish_reasons"]) == ["stop"]  # type: ignore[arg-type]
    assert [e.name for e in generation.events] == ["gen_ai.first_token"]
    # Content is never recorded.
    assert "hello" not in json.dumps([dict(s.attributes or {}) for s in finished], default=str)


async def test_resume_links_to_the_generation_in_flight(slow_replica: Replica, spans: InMemorySpanExporter) -> None:
    auth = await slow_replica.auth("alice")
    conversation = await slow_replica.conversation("alice")
    call = slow_replica.stub.StreamReply(
        pb.StreamReplyRequest(conversation_id=conversation.conversation_id, content="hi"), metadata=auth
    )
    started = (await call.read()).event.started
    await call.read()  # a first delta: the model call is under way
    call.cancel()
    resumed = slow_replica.stub.ResumeReply(
        pb.ResumeReplyRequest(message_id=started.assistant_message.message_id), metadata=auth
    )
    _ = [r async for r in resumed]
    generation = await wait_for_span(spans, "chat fake-echo")
    resume = rpc_span(spans.get_finished_spans(), "ResumeReply")
    assert generation.context.span_id in [link.context.span_id for link in resume.links]


async def test_errors_set_span_status(database_url: str, spans: InMemorySpanExporter) -> None:
    settings = settings_for(database_url, llm_provider="ollama", llm_url="http://127.0.0.1:9", llm_retry_attempts=1)
    async with running_replica(settings) as replica:
        auth = await replica.auth("alice")
        with pytest.raises(grpc.aio.AioRpcError):
            await replica.stub.GetConversation(pb.GetConversationRequest(conversation_id="nope"), metadata=auth)
        # The server ends its span just after it sent the status the client got: waited for, with a bound.
        server = await wait_for_span(spans, "/chat.v1.ChatService/GetConversation")
        # The caller's mistake: status code recorded, span status left UNSET (gRPC semantic conventions).
        assert server.attributes is not None and server.attributes["rpc.grpc.status_code"] == 3
        assert server.status.status_code is StatusCode.UNSET

        conversation = await replica.conversation("alice", model="llama3.2")
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await replica.stub.SendMessage(
                pb.SendMessageRequest(conversation_id=conversation.conversation_id, content="x"), metadata=auth
            )
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        send = await wait_for_span(spans, "/chat.v1.ChatService/SendMessage")
        assert send.status.status_code is StatusCode.ERROR  # a server-side failure
        generation = await wait_for_span(spans, "chat llama3.2")
        assert generation.kind is SpanKind.CLIENT
        assert generation.status.status_code is StatusCode.ERROR
        assert generation.attributes is not None and generation.attributes["error.type"] == "MODEL_UNAVAILABLE"
        # The provider's HTTP request is a child of the model-call span (httpx instrumentation).
        http = [s for s in spans.get_finished_spans() if s.parent and s.parent.span_id == generation.context.span_id]
        assert any(s.kind is SpanKind.CLIENT for s in http), [s.name for s in http]


async def test_metrics_endpoint_is_scraped(database_url: str) -> None:
    port = free_port()
    settings = settings_for(database_url, metrics_port=port, rate_limit_per_minute=3)
    async with running_replica(settings) as replica:
        auth = await replica.auth("alice")
        conversation = await replica.conversation("alice")
        await replica.stub.SendMessage(
            pb.SendMessageRequest(conversation_id=conversation.conversation_id, content="hi"), metadata=auth
        )
        stream = replica.stub.StreamReply(
            pb.StreamReplyRequest(conversation_id=conversation.conversation_id, content="again"), metadata=auth
        )
        _ = [r async for r in stream]
        with pytest.raises(grpc.aio.AioRpcError):
            await replica.stub.ListConversations(pb.ListConversationsRequest(), metadata=auth)
        # The instant fake model can finish both replies before the flusher's first tick: run one (the event the
        # counter reports) instead of hoping one fits in the test's run time.
        await replica.app.deps.use_cases.replies.generations.tick()
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert response.status_code == 200
    lines = response.text.splitlines()

    def sample(name: str, *labels: str) -> float:
        found = [line for line in lines if line.startswith(name + "{") and all(label in line for label in labels)]
        assert found, (name, labels)
        return float(found[0].rsplit(" ", 1)[1])

    send = 'rpc_method="/chat.v1.ChatService/SendMessage"'
    assert sample("rpc_server_duration_seconds_count", send, 'rpc_grpc_status_code="OK"') == 1
    assert sample("rpc_server_duration_seconds_bucket", send, 'le="120"') == 1
    assert sample("rpc_server_duration_seconds_count", 'rpc_grpc_status_code="RESOURCE_EXHAUSTED"') == 1
    assert sample("gen_ai_server_time_to_first_token_seconds_count", 'gen_ai_provider_name="fake"') == 2
    assert sample("chat_generation_output_tokens_per_second_count") == 2
    assert sample("chat_generations_in_flight") == 0
    assert sample("chat_rpc_active_streams", 'rpc_method="/chat.v1.ChatService/StreamReply"') == 0
    assert sample("chat_rate_limit_rejections_total", 'chat_limit="requests"') == 1
    assert sample("chat_reply_flushes_total") >= 1


@contextlib.contextmanager
def json_log(capfd: pytest.CaptureFixture[str]) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """The service's own log set-up (JSON lines on stderr) at DEBUG, captured; restored afterwards. Entered
    in the test itself: the handler keeps the stderr of the phase it was made in."""
    root = logging.getLogger()
    level = root.level
    logs.configure("DEBUG")

    def lines() -> list[dict[str, Any]]:
        return [json.loads(line) for line in capfd.readouterr().err.splitlines() if line.startswith("{")]

    try:
        yield lines
    finally:
        root.handlers = [h for h in root.handlers if not getattr(h, "_chat_service", False)]
        root.setLevel(level)


async def test_access_log_has_the_fields_and_never_content_or_secrets(
    replica: Replica, capfd: pytest.CaptureFixture[str]
) -> None:
    with json_log(capfd) as read_log:
        await _log_content_and_secrets(replica, read_log)


async def _log_content_and_secrets(replica: Replica, read_log: Callable[[], list[dict[str, Any]]]) -> None:
    marker = "zebra-marker-7f3a"
    key = await replica.key("alice")
    auth = (("authorization", f"Bearer {key}"), ("x-request-id", "req-123"))
    conversation = await replica.conversation("alice", title=f"title {marker}", system_prompt=f"be {marker}")
    await replica.stub.SendMessage(
        pb.SendMessageRequest(conversation_id=conversation.conversation_id, content=f"say {marker}"), metadata=auth
    )
    # The access line of a refused call is written after the client has its status: wait for it. On the root
    # logger, the handler runs after the service's JSON handler has written the line.
    seen = AccessLog()
    logging.getLogger().addHandler(seen)
    try:
        with pytest.raises(grpc.aio.AioRpcError):  # a failed attempt with a wrong secret is logged too
            await replica.stub.ListConversations(
                pb.ListConversationsRequest(), metadata=(("authorization", f"Bearer {key}x"),)
            )
        await asyncio.to_thread(seen.wait_until, _refused_logged, "the refused call's line")
    finally:
        logging.getLogger().removeHandler(seen)
    lines = read_log()
    assert len(lines) > 5  # DEBUG: the libraries' lines too
    dump = json.dumps(lines)
    assert marker not in dump
    assert secret_of(key) not in dump
    assert "Bearer" not in dump

    access = [line for line in lines if line["logger"] == "service.access" and line["event"] == "rpc"]
    line = next(a for a in access if a["method"] == "/chat.v1.ChatService/SendMessage")
    assert line["user"] == "alice" and line["code"] == "OK" and line["request_id"] == "req-123"
    assert line["duration_ms"] > 0 and line["bytes"] > 0 and line["peer"] and line["level"] == "info"
    assert {"trace_id", "span_id", "timestamp"} <= set(line)
    refused = [a for a in access if a["code"] == "UNAUTHENTICATED"]
    assert refused and refused[0]["user"] is None


def _refused_logged(entries: list[Entry]) -> bool:
    return any(entry.code == "UNAUTHENTICATED" for entry in entries)


class BrokenModels:
    """A provider whose model list fails with a bug (not a domain error): what INTERNAL is for."""

    name = "fake"
    continues = False
    takes_images = False

    def stream(self, prompt: object) -> Any:
        raise NotImplementedError

    async def list_models(self) -> Any:
        raise RuntimeError("a bug")

    async def aclose(self) -> None:
        return None


async def test_an_unhandled_error_is_logged_with_the_calls_trace_id(
    database_url: str, spans: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_replica(settings_for(database_url), provider=BrokenModels()) as replica:  # type: ignore[arg-type]
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await replica.stub.ListModels(pb.ListModelsRequest(), metadata=await replica.auth("alice"))
    assert failed.value.code() == grpc.StatusCode.INTERNAL and failed.value.details() == "internal error"
    # Its ErrorInfo tells it from an INTERNAL a proxy makes up for a reset stream (which clients resume).
    assert from_rpc_error(failed.value).reason == "INTERNAL"
    server = rpc_span(spans.get_finished_spans(), "ListModels")
    (record,) = [r for r in caplog.records if r.getMessage() == "unhandled error"]
    assert record.trace_id == f"{server.context.trace_id:032x}"  # type: ignore[attr-defined]
    assert record.span_id == f"{server.context.span_id:016x}"  # type: ignore[attr-defined]


async def test_cancelled_streams_leave_no_context_errors_in_the_log(
    slow_replica: Replica, spans: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    """OpenTelemetry's grpc instrumentation logged `ERROR Failed to detach context` for cancelled streams (16 in
    400): a context attached in a stream's generator was detached from another one when it was closed."""
    auth = await slow_replica.auth("alice")
    for _ in range(10):
        conversation = await slow_replica.conversation("alice")
        call = slow_replica.stub.StreamReply(
            pb.StreamReplyRequest(conversation_id=conversation.conversation_id, content="hi"), metadata=auth
        )
        started = (await call.read()).event.started
        await call.read()
        call.cancel()
        resumed = slow_replica.stub.ResumeReply(
            pb.ResumeReplyRequest(message_id=started.assistant_message.message_id), metadata=auth
        )
        await resumed.read()
        resumed.cancel()
        await slow_replica.stub.CancelReply(
            pb.CancelReplyRequest(message_id=started.assistant_message.message_id), metadata=auth
        )
    assert [s.name for s in spans.get_finished_spans() if s.name.endswith("StreamReply")]  # traced all along
    noise = [r for r in caplog.records if r.name.startswith("opentelemetry") and r.levelno >= logging.WARNING]
    assert noise == []
