"""Pure conversions between protobuf messages and domain objects."""

from __future__ import annotations

from datetime import datetime

from google.protobuf import timestamp_pb2

from chat.v1 import admin_pb2
from chat.v1 import chat_pb2 as pb
from service.auth.api_keys import KEY_PREFIX
from service.chat import ConversationFields
from service.domain import (
    ApiKey,
    Conversation,
    FinishReason,
    Message,
    MessageStatus,
    ModelInfo,
    Role,
    SearchHit,
    Usage,
)
from service.export import MEDIA_TYPES, ExportFormat
from service.replies import Delta, Ended, ReplyEvent, Rewind, Started

ROLES = {Role.USER: pb.ROLE_USER, Role.ASSISTANT: pb.ROLE_ASSISTANT, Role.SYSTEM: pb.ROLE_SYSTEM}
STATUSES = {
    MessageStatus.COMPLETED: pb.MESSAGE_STATUS_COMPLETED,
    MessageStatus.STREAMING: pb.MESSAGE_STATUS_STREAMING,
    MessageStatus.CANCELLED: pb.MESSAGE_STATUS_CANCELLED,
    MessageStatus.FAILED: pb.MESSAGE_STATUS_FAILED,
    MessageStatus.INTERRUPTED: pb.MESSAGE_STATUS_INTERRUPTED,
}
FINISH_REASONS = {
    FinishReason.NONE: pb.FINISH_REASON_UNSPECIFIED,
    FinishReason.STOP: pb.FINISH_REASON_STOP,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.CONTENT_FILTER: pb.FINISH_REASON_CONTENT_FILTER,
}


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def conversation(c: Conversation) -> pb.Conversation:
    return pb.Conversation(
        conversation_id=c.id,
        title=c.title,
        model=c.model,
        persona=c.persona,
        system_prompt=c.system_prompt,
        create_time=timestamp(c.create_time),
        update_time=timestamp(c.update_time),
        owner_user_id=c.owner,
        current_message_id=c.current_message_id,
    )


def message(m: Message) -> pb.Message:
    place = m.siblings
    return pb.Message(
        message_id=m.id,
        conversation_id=m.conversation_id,
        role=ROLES[m.role],
        content=m.content,
        status=STATUSES[m.status],
        model=m.model,
        usage=usage(m.usage),
        finish_reason=FINISH_REASONS[m.finish_reason],
        create_time=timestamp(m.create_time),
        update_time=timestamp(m.update_time),
        request_id=m.request_id,
        error_message=m.error_message,
        continuations=len(m.continued_at),
        attachment_ids=m.attachment_ids,
        parent_message_id=m.parent_id,
        sibling_count=place.count if place else 0,
        sibling_index=place.index if place else 0,
        previous_sibling_id=place.previous_id if place else "",
        next_sibling_id=place.next_id if place else "",
    )


def usage(u: Usage) -> pb.Usage:
    return pb.Usage(prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens, estimated=u.estimated)


def model(info: ModelInfo, *, default_model: str) -> pb.Model:
    return pb.Model(
        name=info.name,
        provider=info.provider,
        family=info.family,
        parameter_size=info.parameter_size,
        quantization_level=info.quantization_level,
        size_bytes=info.size_bytes,
        default=info.name == default_model,
    )


def conversation_fields(
    request: pb.CreateConversationRequest | pb.Conversation,
) -> ConversationFields:
    return ConversationFields(
        title=request.title, model=request.model, persona=request.persona, system_prompt=request.system_prompt
    )


def reply_event(event: ReplyEvent) -> pb.ReplyEvent:
    if type(event) is Delta:
        return pb.ReplyEvent(delta=pb.ReplyDelta(text=event.text, offset=event.offset, generation=event.generation))
    if isinstance(event, Rewind):
        return pb.ReplyEvent(rewind=pb.ReplyRewind(offset=event.offset, generation=event.generation))
    if isinstance(event, Started):
        user = message(event.user_message) if event.user_message else None
        return pb.ReplyEvent(
            started=pb.ReplyStarted(user_message=user, assistant_message=message(event.assistant_message))
        )
    assert isinstance(event, Ended)
    return pb.ReplyEvent(completed=pb.ReplyCompleted(message=message(event.message)))


EXPORT_FORMATS: dict[int, ExportFormat] = {
    pb.EXPORT_FORMAT_MARKDOWN: ExportFormat.MARKDOWN,
    pb.EXPORT_FORMAT_JSON: ExportFormat.JSON,
    pb.EXPORT_FORMAT_CSV: ExportFormat.CSV,
}


def export_format(value: int) -> ExportFormat | None:
    return EXPORT_FORMATS.get(value)


def media_type(fmt: ExportFormat | None) -> str:
    return MEDIA_TYPES[fmt] if fmt else ""


def search_result(hit: SearchHit) -> pb.SearchResult:
    return pb.SearchResult(
        message=message(hit.message),
        snippet=hit.snippet,
        conversation_title=hit.conversation_title,
        score=hit.score,
        on_current_branch=hit.on_current_branch,
    )


def api_key(key: ApiKey) -> admin_pb2.ApiKey:
    return admin_pb2.ApiKey(
        key_id=key.id,
        prefix=f"{KEY_PREFIX}_{key.id}_",
        user_id=key.user_id,
        scopes=sorted(key.scopes),
        display_name=key.name,
        create_time=timestamp(key.create_time),
        last_use_time=timestamp(key.last_used_time) if key.last_used_time else None,
        revoke_time=timestamp(key.revoke_time) if key.revoke_time else None,
    )
