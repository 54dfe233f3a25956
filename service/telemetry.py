"""OpenTelemetry: tracing (OTLP export when `OTEL_EXPORTER_OTLP_ENDPOINT` is set), library instrumentation,
one GenAI span per model call, and metrics exported for Prometheus scraping."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from service.domain import Completion, DomainError, Prompt
from service.replies.generation import StreamGate

TRACER_NAME = "chat-service"
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
RATE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)
IN_PROCESS_PROVIDERS = frozenset({"local", "fake"})


# One tracer for the process, made once: `trace.get_tracer` per call makes a tracer and, while no SDK provider is
# installed (tracing off), looks the provider up in the environment each time (~3 % of the CPU at 200 streams).
# A proxy starts no-op spans until a provider is installed, and that provider's spans from then on.
_TRACER = trace.ProxyTracer(TRACER_NAME)


def tracer() -> trace.Tracer:
    return _TRACER


def configure_tracing(service_name: str = "chat-service") -> Callable[[], None]:
    """Install the SDK with an OTLP exporter when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (the exporter reads
    the standard OTEL_* variables); otherwise tracing stays the API's no-op. Returns a shutdown function."""
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return lambda: None
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = tracer_provider(resource=Resource.create({SERVICE_NAME: _service_name(service_name)}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider.shutdown


class OwnRandomIds(IdGenerator):
    """Span and trace ids from a generator of their own. The SDK's default draws them from the `random` module's
    global state, which is anyone's to seed or to watch: an application may seed it, and a test framework does
    (hypothesis seeds it around each example and flags any change made meanwhile, by any thread)."""

    def __init__(self) -> None:
        self._random = random.Random()  # seeded from os.urandom
        os.register_at_fork(after_in_child=self._random.seed)  # a forked worker must not repeat its parent's ids

    def generate_span_id(self) -> int:
        return self._random.getrandbits(64) or 1  # 0 is the invalid span id

    def generate_trace_id(self) -> int:
        return self._random.getrandbits(128) or 1

    def is_trace_id_random(self) -> bool:
        return True


def tracer_provider(**options: Any) -> TracerProvider:
    """The SDK's tracer provider with ids of its own (`OwnRandomIds`)."""
    return TracerProvider(id_generator=OwnRandomIds(), **options)


def _service_name(default: str) -> str:
    # Explicit resource attributes would override the standard variable: honour it here.
    return os.environ.get("OTEL_SERVICE_NAME") or default


def tracing_enabled() -> bool:
    """Whether spans go anywhere: an SDK tracer provider is installed (by `configure_tracing`, or a test's)."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider | trace.NoOpTracerProvider)


def instrument_libraries(sync_engine: Any) -> None:
    """Child spans for SQL statements (this engine) and outgoing HTTP (aiohttp: the model adapters; httpx: the
    audio adapters), each client library instrumented once per process — only when tracing is on: the
    instrumentation does its work per statement and per request (the statement's name parsed from its SQL, a
    span made and ended, context attached) even when every span it makes is dropped."""
    if not tracing_enabled():
        return
    from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer

    for instrumentor in (AioHttpClientInstrumentor(), HTTPXClientInstrumentor()):
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument()
    connections = metrics.get_meter(TRACER_NAME).create_up_down_counter("db.client.connections.usage")
    EngineTracer(trace.get_tracer("service.storage"), sync_engine, connections)


# ------------------------------------------------------------------------------------------------ metrics


class Metrics:
    """The service's instruments. Built from a Meter (an SDK one exported to Prometheus, or a no-op)."""

    def __init__(self, meter: Meter) -> None:
        self.meter = meter
        self.rpc_duration = meter.create_histogram(
            "rpc.server.duration",
            unit="s",
            description="RPC latency by method and status code",
            explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
        )
        self.time_to_first_token = meter.create_histogram(
            "gen_ai.server.time_to_first_token",
            unit="s",
            description="time from model call to first text",
            explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
        )
        self.output_tokens_per_second = meter.create_histogram(
            "chat.generation.output_tokens_per_second",
            unit="{token}/s",
            description="output tokens per second",
            explicit_bucket_boundaries_advisory=RATE_BUCKETS,
        )
        self.active_streams = meter.create_up_down_counter(
            "chat.rpc.active_streams", unit="{stream}", description="streaming RPCs open"
        )
        self.generations_in_flight = meter.create_up_down_counter(
            "chat.generations.in_flight", unit="{generation}", description="model calls in progress"
        )
        self.rate_limit_rejections = meter.create_counter(
            "chat.rate_limit.rejections", unit="{request}", description="requests refused by rate limits"
        )

    def observe_flushes(self, commits: Callable[[], int]) -> None:
        """Flush transactions committed by the reply flusher (read when scraped)."""

        def observe(_options: CallbackOptions) -> list[Observation]:
            return [Observation(commits())]

        self.meter.create_observable_counter(
            "chat.reply.flushes", callbacks=[observe], unit="{flush}", description="partial-reply flushes"
        )

    def observe_model_streams(self, gate: StreamGate) -> None:
        """Model calls running, and replies waiting for one (CHAT_LLM_MAX_STREAMS reached)."""
        self.meter.create_observable_gauge(
            "chat.llm.streams.active",
            callbacks=[lambda _options: [Observation(gate.active)]],
            unit="{stream}",
            description="model calls in progress",
        )
        self.meter.create_observable_gauge(
            "chat.llm.streams.waiting",
            callbacks=[lambda _options: [Observation(gate.waiting)]],
            unit="{reply}",
            description="replies waiting for a model stream (the limit is reached)",
        )


class MetricsEndpoint:
    """An SDK MeterProvider read by a Prometheus exporter on its own registry, served on `host:port`."""

    def __init__(self, host: str, port: int) -> None:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from prometheus_client import CollectorRegistry, start_http_server

        self._registry = CollectorRegistry()
        reader = PrometheusMetricReader(registry=self._registry)
        self.provider = MeterProvider(metric_readers=[reader], resource=Resource.create({SERVICE_NAME: "chat-service"}))
        self._server, self._thread = start_http_server(port, addr=host, registry=self._registry)
        self.port: int = self._server.server_port

    def meter(self) -> Meter:
        return self.provider.get_meter(TRACER_NAME)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self.provider.shutdown()


def noop_metrics() -> Metrics:
    return Metrics(metrics.NoOpMeterProvider().get_meter(TRACER_NAME))


# ------------------------------------------------------------------------------------------------ GenAI spans


class ModelCalls:
    """Implements `ports.ModelCallObserver`: one GenAI span per model call (semantic conventions for `chat`), an
    event at the first token, and the generation metrics. The span starts a trace of its own, linked to the RPC
    that started the reply (the reply belongs to the server and may outlive that RPC). Never records content.

    Told of a call's start, first token and end by whoever runs it (the reply producer, the coaching
    classifier), not wrapped around the provider's stream: that wrapper was a generator layer per token."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        # The span of the model call in flight per conversation (one reply at a time), for ResumeReply's link.
        self._live: dict[str, trace.SpanContext] = {}

    def started(self, provider: str, prompt: Prompt) -> ModelCallSpan:
        return ModelCallSpan(self, provider, prompt)

    def link_to_generation(self, conversation_id: str) -> None:
        """Link the current span (a ResumeReply) to the model call generating in this conversation, if any."""
        generation = self._live.get(conversation_id)
        if generation is not None:
            trace.get_current_span().add_link(generation, {"chat.link": "resumed_generation"})


class ModelCallSpan:
    """One model call being observed. The span is made current in the caller's task (its HTTP requests become
    children): the caller runs the call in a task of its own, so nothing needs detaching."""

    __slots__ = ("_calls", "_first_token", "_model", "_prompt", "_span", "_started")

    def __init__(self, calls: ModelCalls, provider: str, prompt: Prompt) -> None:
        starter = trace.get_current_span().get_span_context()
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": provider,
            "gen_ai.request.model": prompt.model,
            "gen_ai.request.max_tokens": prompt.max_tokens,
            "gen_ai.output.type": "text",
        }
        if prompt.conversation_id:
            attributes["gen_ai.conversation.id"] = prompt.conversation_id
        self._span = tracer().start_span(
            f"chat {prompt.model}",
            context=otel_context.Context(),
            kind=SpanKind.INTERNAL if provider in IN_PROCESS_PROVIDERS else SpanKind.CLIENT,
            attributes=attributes,
            links=[Link(starter, {"chat.link": "started_by"})] if starter.is_valid else [],
        )
        self._calls, self._prompt = calls, prompt
        if prompt.conversation_id:
            calls._live[prompt.conversation_id] = self._span.get_span_context()
        self._model = {"gen_ai.request.model": prompt.model, "gen_ai.provider.name": provider}
        calls._metrics.generations_in_flight.add(1, self._model)
        self._started = time.perf_counter()
        self._first_token: float | None = None
        otel_context.attach(trace.set_span_in_context(self._span))

    def first_token(self) -> None:
        self._first_token = now = time.perf_counter()
        self._span.add_event("gen_ai.first_token", {"gen_ai.server.time_to_first_token": now - self._started})
        self._calls._metrics.time_to_first_token.record(now - self._started, self._model)

    def completed(self, item: Completion) -> None:
        self._span.set_attributes(
            {
                "gen_ai.usage.input_tokens": item.usage.prompt_tokens,
                "gen_ai.usage.output_tokens": item.usage.completion_tokens,
                "gen_ai.response.finish_reasons": [item.finish_reason.value or "stop"],
            }
        )
        if self._first_token is not None and item.usage.completion_tokens:
            elapsed = time.perf_counter() - self._first_token
            if elapsed > 0:
                rate = item.usage.completion_tokens / elapsed
                self._calls._metrics.output_tokens_per_second.record(rate, self._model)

    def failed(self, error: BaseException) -> None:
        reason = error.reason if isinstance(error, DomainError) else type(error).__name__
        self._span.set_attribute("error.type", reason)
        self._span.set_status(Status(StatusCode.ERROR, reason))

    def end(self) -> None:
        self._calls._metrics.generations_in_flight.add(-1, self._model)
        live = self._calls._live
        if live.get(self._prompt.conversation_id) == self._span.get_span_context():
            del live[self._prompt.conversation_id]
        self._span.end()
