"""Python client for chat-service: `ChatClient` (asyncio), `SyncChatClient` (blocking), typed errors."""

from chat_client.client import DEFAULT_ADDRESS, ChatClient
from chat_client.errors import (
    Cancelled,
    ChatError,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    Internal,
    InvalidArgument,
    ModelUnavailable,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from chat_client.replies import ReplyStream
from chat_client.retry import RetryPolicy
from chat_client.sync import SyncChatClient

__all__ = [
    "DEFAULT_ADDRESS",
    "Cancelled",
    "ChatClient",
    "ChatError",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FieldViolation",
    "Internal",
    "InvalidArgument",
    "ModelUnavailable",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "ReplyStream",
    "ResourceExhausted",
    "RetryPolicy",
    "SyncChatClient",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
]
