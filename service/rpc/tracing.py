"""A SERVER span per call, continuing the caller's W3C `traceparent`, with the gRPC semantic-convention
attributes (`rpc.system`, `rpc.service`, `rpc.method`, `rpc.grpc.status_code`).

Written here rather than taken from opentelemetry-instrumentation-grpc: its interceptor wraps each call in a
generator layer of its own (per streamed message), and attaches and detaches the span's context across a
stream's lifetime — which fails, with an ERROR log line, whenever a cancelled stream is closed from another
context. Here the span is made current once, in the call's own task, and that task's context ends with the call.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

TRACER_NAME = "service.rpc"
_TRACER = trace.ProxyTracer(TRACER_NAME)  # made once (see `service.telemetry.tracer`)
# Codes that mean the server failed (gRPC semantic conventions): the span's status is ERROR. Any other code is
# the caller's business (a bad argument, a missing resource): status left UNSET, the code recorded.
SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


def start_server_span(method: str, metadata: Mapping[str, str], peer: str) -> trace.Span:
    """Start the call's span as a child of the caller's (if it sent one) and make it current for the call."""
    service, _, name = method.lstrip("/").rpartition("/")
    attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
    address, _, port = peer.rpartition(":")
    if address.startswith("ipv4") or address.startswith("ipv6"):
        attributes["network.peer.address"] = address.split(":", 1)[1].strip("[]")
        attributes["network.peer.port"] = port
    parent = propagate.extract(metadata)
    span = _TRACER.start_span(method, context=parent, kind=SpanKind.SERVER, attributes=attributes)
    # Not detached: the call runs in a task of its own, whose context ends with it (see the module docstring).
    otel_context.attach(trace.set_span_in_context(span, parent))
    return span


def end_server_span(span: trace.Span, code: grpc.StatusCode | object) -> None:
    if isinstance(code, grpc.StatusCode):
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code in SERVER_ERRORS:
            span.set_status(Status(StatusCode.ERROR, code.name))
    span.end()
