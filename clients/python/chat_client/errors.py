"""Typed exceptions for failed calls, carrying the google.rpc.Status details the server sends (AIP-193)."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class ChatError(Exception):
    """A call failed. `code` is the gRPC status; the details are decoded when the server sent them."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        violations: tuple[FieldViolation, ...] = (),
        retry_delay: float | None = None,
        reason: str = "",
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.violations = violations
        self.retry_delay = retry_delay
        self.reason = reason
        self.metadata = metadata or {}

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


class InvalidArgument(ChatError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class Unauthenticated(ChatError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ChatError):
    code = grpc.StatusCode.PERMISSION_DENIED


class NotFound(ChatError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(ChatError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class OutOfRange(ChatError):
    code = grpc.StatusCode.OUT_OF_RANGE


class ResourceExhausted(ChatError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ChatError):
    code = grpc.StatusCode.UNAVAILABLE


class ModelUnavailable(Unavailable):
    """The server answered, but its model provider cannot be reached or failed (`reason` says which); unlike a
    plain Unavailable, chat-service itself is up."""


# The ErrorInfo reasons chat-service gives a model provider's failures (its service/domain/__init__.py).
MODEL_REASONS = frozenset({"MODEL_UNAVAILABLE", "MODEL_FAILED"})


class DeadlineExceeded(ChatError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unimplemented(ChatError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Cancelled(ChatError):
    code = grpc.StatusCode.CANCELLED


class Internal(ChatError):
    code = grpc.StatusCode.INTERNAL


ERRORS: dict[grpc.StatusCode, type[ChatError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        Unauthenticated,
        PermissionDenied,
        NotFound,
        FailedPrecondition,
        OutOfRange,
        ResourceExhausted,
        Unavailable,
        DeadlineExceeded,
        Unimplemented,
        Cancelled,
        Internal,
    )
}


@dataclass
class _Details:
    violations: list[FieldViolation] = field(default_factory=list)
    retry_delay: float | None = None
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


def _details(status: status_pb2.Status | None) -> _Details:
    found = _Details()
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found.violations += [FieldViolation(v.field, v.description) for v in bad.field_violations]
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            found.retry_delay = retry.retry_delay.ToNanoseconds() / 1e9
        elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            found.reason, found.metadata = info.reason, dict(info.metadata)
    return found


def from_rpc_error(error: grpc.RpcError) -> ChatError:
    """The typed exception for a failed call (grpc.aio.AioRpcError or a sync grpc.Call error)."""
    code: grpc.StatusCode = error.code()
    message: str = error.details() or code.name
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except ValueError:  # details that contradict the code: keep the code, drop the details
        status = None
    found = _details(status)
    kind = ERRORS.get(code, ChatError)
    if kind is Unavailable and found.reason in MODEL_REASONS:
        kind = ModelUnavailable
    return kind(
        message,
        code=code,
        violations=tuple(found.violations),
        retry_delay=found.retry_delay,
        reason=found.reason,
        metadata=found.metadata,
    )
