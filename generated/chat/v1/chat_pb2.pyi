import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    ROLE_USER: _ClassVar[Role]
    ROLE_ASSISTANT: _ClassVar[Role]
    ROLE_SYSTEM: _ClassVar[Role]

class MessageStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MESSAGE_STATUS_UNSPECIFIED: _ClassVar[MessageStatus]
    MESSAGE_STATUS_COMPLETED: _ClassVar[MessageStatus]
    MESSAGE_STATUS_STREAMING: _ClassVar[MessageStatus]
    MESSAGE_STATUS_CANCELLED: _ClassVar[MessageStatus]
    MESSAGE_STATUS_FAILED: _ClassVar[MessageStatus]
    MESSAGE_STATUS_INTERRUPTED: _ClassVar[MessageStatus]

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_STOP: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]
    FINISH_REASON_CONTENT_FILTER: _ClassVar[FinishReason]

class ExportFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXPORT_FORMAT_UNSPECIFIED: _ClassVar[ExportFormat]
    EXPORT_FORMAT_MARKDOWN: _ClassVar[ExportFormat]
    EXPORT_FORMAT_JSON: _ClassVar[ExportFormat]
    EXPORT_FORMAT_CSV: _ClassVar[ExportFormat]

class CoachingStage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COACHING_STAGE_UNSPECIFIED: _ClassVar[CoachingStage]
    COACHING_STAGE_ACTIVE: _ClassVar[CoachingStage]
    COACHING_STAGE_CONFIRMING: _ClassVar[CoachingStage]
    COACHING_STAGE_WRAPPING_UP: _ClassVar[CoachingStage]
    COACHING_STAGE_ENDED: _ClassVar[CoachingStage]

class EndReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    END_REASON_UNSPECIFIED: _ClassVar[EndReason]
    END_REASON_USER_REQUESTED: _ClassVar[EndReason]
    END_REASON_LIMIT_REACHED: _ClassVar[EndReason]
    END_REASON_CLIENT_ENDED: _ClassVar[EndReason]

class ConversationScope(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONVERSATION_SCOPE_UNSPECIFIED: _ClassVar[ConversationScope]
    CONVERSATION_SCOPE_OWNED: _ClassVar[ConversationScope]
    CONVERSATION_SCOPE_SHARED: _ClassVar[ConversationScope]
    CONVERSATION_SCOPE_ALL: _ClassVar[ConversationScope]

class ShareRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SHARE_ROLE_UNSPECIFIED: _ClassVar[ShareRole]
    SHARE_ROLE_VIEWER: _ClassVar[ShareRole]
ROLE_UNSPECIFIED: Role
ROLE_USER: Role
ROLE_ASSISTANT: Role
ROLE_SYSTEM: Role
MESSAGE_STATUS_UNSPECIFIED: MessageStatus
MESSAGE_STATUS_COMPLETED: MessageStatus
MESSAGE_STATUS_STREAMING: MessageStatus
MESSAGE_STATUS_CANCELLED: MessageStatus
MESSAGE_STATUS_FAILED: MessageStatus
MESSAGE_STATUS_INTERRUPTED: MessageStatus
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_STOP: FinishReason
FINISH_REASON_LENGTH: FinishReason
FINISH_REASON_CONTENT_FILTER: FinishReason
EXPORT_FORMAT_UNSPECIFIED: ExportFormat
EXPORT_FORMAT_MARKDOWN: ExportFormat
EXPORT_FORMAT_JSON: ExportFormat
EXPORT_FORMAT_CSV: ExportFormat
COACHING_STAGE_UNSPECIFIED: CoachingStage
COACHING_STAGE_ACTIVE: CoachingStage
COACHING_STAGE_CONFIRMING: CoachingStage
COACHING_STAGE_WRAPPING_UP: CoachingStage
COACHING_STAGE_ENDED: CoachingStage
END_REASON_UNSPECIFIED: EndReason
END_REASON_USER_REQUESTED: EndReason
END_REASON_LIMIT_REACHED: EndReason
END_REASON_CLIENT_ENDED: EndReason
CONVERSATION_SCOPE_UNSPECIFIED: ConversationScope
CONVERSATION_SCOPE_OWNED: ConversationScope
CONVERSATION_SCOPE_SHARED: ConversationScope
CONVERSATION_SCOPE_ALL: ConversationScope
SHARE_ROLE_UNSPECIFIED: ShareRole
SHARE_ROLE_VIEWER: ShareRole

class Conversation(_message.Message):
    __slots__ = ("conversation_id", "title", "model", "persona", "system_prompt", "create_time", "update_time", "owner_user_id", "current_message_id")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PERSONA_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_PROMPT_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    OWNER_USER_ID_FIELD_NUMBER: _ClassVar[int]
    CURRENT_MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    title: str
    model: str
    persona: str
    system_prompt: str
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    owner_user_id: str
    current_message_id: str
    def __init__(self, conversation_id: _Optional[str] = ..., title: _Optional[str] = ..., model: _Optional[str] = ..., persona: _Optional[str] = ..., system_prompt: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., owner_user_id: _Optional[str] = ..., current_message_id: _Optional[str] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("prompt_tokens", "completion_tokens", "estimated")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    completion_tokens: int
    estimated: bool
    def __init__(self, prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., estimated: _Optional[bool] = ...) -> None: ...

class Message(_message.Message):
    __slots__ = ("message_id", "conversation_id", "role", "content", "status", "model", "usage", "finish_reason", "create_time", "update_time", "request_id", "error_message", "continuations", "attachment_ids", "parent_message_id", "sibling_count", "sibling_index", "previous_sibling_id", "next_sibling_id")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CONTINUATIONS_FIELD_NUMBER: _ClassVar[int]
    ATTACHMENT_IDS_FIELD_NUMBER: _ClassVar[int]
    PARENT_MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    SIBLING_COUNT_FIELD_NUMBER: _ClassVar[int]
    SIBLING_INDEX_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_SIBLING_ID_FIELD_NUMBER: _ClassVar[int]
    NEXT_SIBLING_ID_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    conversation_id: str
    role: Role
    content: str
    status: MessageStatus
    model: str
    usage: Usage
    finish_reason: FinishReason
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    request_id: str
    error_message: str
    continuations: int
    attachment_ids: _containers.RepeatedScalarFieldContainer[str]
    parent_message_id: str
    sibling_count: int
    sibling_index: int
    previous_sibling_id: str
    next_sibling_id: str
    def __init__(self, message_id: _Optional[str] = ..., conversation_id: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ..., content: _Optional[str] = ..., status: _Optional[_Union[MessageStatus, str]] = ..., model: _Optional[str] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., request_id: _Optional[str] = ..., error_message: _Optional[str] = ..., continuations: _Optional[int] = ..., attachment_ids: _Optional[_Iterable[str]] = ..., parent_message_id: _Optional[str] = ..., sibling_count: _Optional[int] = ..., sibling_index: _Optional[int] = ..., previous_sibling_id: _Optional[str] = ..., next_sibling_id: _Optional[str] = ...) -> None: ...

class Model(_message.Message):
    __slots__ = ("name", "provider", "family", "parameter_size", "quantization_level", "size_bytes", "default")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_SIZE_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_LEVEL_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_FIELD_NUMBER: _ClassVar[int]
    name: str
    provider: str
    family: str
    parameter_size: str
    quantization_level: str
    size_bytes: int
    default: bool
    def __init__(self, name: _Optional[str] = ..., provider: _Optional[str] = ..., family: _Optional[str] = ..., parameter_size: _Optional[str] = ..., quantization_level: _Optional[str] = ..., size_bytes: _Optional[int] = ..., default: _Optional[bool] = ...) -> None: ...

class CreateConversationRequest(_message.Message):
    __slots__ = ("title", "model", "system_prompt", "persona")
    TITLE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_PROMPT_FIELD_NUMBER: _ClassVar[int]
    PERSONA_FIELD_NUMBER: _ClassVar[int]
    title: str
    model: str
    system_prompt: str
    persona: str
    def __init__(self, title: _Optional[str] = ..., model: _Optional[str] = ..., system_prompt: _Optional[str] = ..., persona: _Optional[str] = ...) -> None: ...

class CreateConversationResponse(_message.Message):
    __slots__ = ("conversation",)
    CONVERSATION_FIELD_NUMBER: _ClassVar[int]
    conversation: Conversation
    def __init__(self, conversation: _Optional[_Union[Conversation, _Mapping]] = ...) -> None: ...

class GetConversationRequest(_message.Message):
    __slots__ = ("conversation_id",)
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    def __init__(self, conversation_id: _Optional[str] = ...) -> None: ...

class GetConversationResponse(_message.Message):
    __slots__ = ("conversation",)
    CONVERSATION_FIELD_NUMBER: _ClassVar[int]
    conversation: Conversation
    def __init__(self, conversation: _Optional[_Union[Conversation, _Mapping]] = ...) -> None: ...

class ListConversationsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "scope")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    scope: ConversationScope
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., scope: _Optional[_Union[ConversationScope, str]] = ...) -> None: ...

class ListConversationsResponse(_message.Message):
    __slots__ = ("conversations", "next_page_token")
    CONVERSATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    conversations: _containers.RepeatedCompositeFieldContainer[Conversation]
    next_page_token: str
    def __init__(self, conversations: _Optional[_Iterable[_Union[Conversation, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UpdateConversationRequest(_message.Message):
    __slots__ = ("conversation", "update_mask")
    CONVERSATION_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    conversation: Conversation
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, conversation: _Optional[_Union[Conversation, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class UpdateConversationResponse(_message.Message):
    __slots__ = ("conversation",)
    CONVERSATION_FIELD_NUMBER: _ClassVar[int]
    conversation: Conversation
    def __init__(self, conversation: _Optional[_Union[Conversation, _Mapping]] = ...) -> None: ...

class DeleteConversationRequest(_message.Message):
    __slots__ = ("conversation_id",)
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    def __init__(self, conversation_id: _Optional[str] = ...) -> None: ...

class DeleteConversationResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListMessagesRequest(_message.Message):
    __slots__ = ("conversation_id", "page_size", "page_token", "branch_message_id")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    BRANCH_MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    page_size: int
    page_token: str
    branch_message_id: str
    def __init__(self, conversation_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., branch_message_id: _Optional[str] = ...) -> None: ...

class ListMessagesResponse(_message.Message):
    __slots__ = ("messages", "next_page_token")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    next_page_token: str
    def __init__(self, messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class SendMessageRequest(_message.Message):
    __slots__ = ("conversation_id", "content", "request_id", "background", "attachment_ids")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    BACKGROUND_FIELD_NUMBER: _ClassVar[int]
    ATTACHMENT_IDS_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    content: str
    request_id: str
    background: bool
    attachment_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, conversation_id: _Optional[str] = ..., content: _Optional[str] = ..., request_id: _Optional[str] = ..., background: _Optional[bool] = ..., attachment_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class SendMessageResponse(_message.Message):
    __slots__ = ("message", "user_message")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    USER_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: Message
    user_message: Message
    def __init__(self, message: _Optional[_Union[Message, _Mapping]] = ..., user_message: _Optional[_Union[Message, _Mapping]] = ...) -> None: ...

class StreamReplyRequest(_message.Message):
    __slots__ = ("conversation_id", "content", "request_id", "attachment_ids")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ATTACHMENT_IDS_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    content: str
    request_id: str
    attachment_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, conversation_id: _Optional[str] = ..., content: _Optional[str] = ..., request_id: _Optional[str] = ..., attachment_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ReplyEvent(_message.Message):
    __slots__ = ("started", "delta", "completed", "rewind")
    STARTED_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    REWIND_FIELD_NUMBER: _ClassVar[int]
    started: ReplyStarted
    delta: ReplyDelta
    completed: ReplyCompleted
    rewind: ReplyRewind
    def __init__(self, started: _Optional[_Union[ReplyStarted, _Mapping]] = ..., delta: _Optional[_Union[ReplyDelta, _Mapping]] = ..., completed: _Optional[_Union[ReplyCompleted, _Mapping]] = ..., rewind: _Optional[_Union[ReplyRewind, _Mapping]] = ...) -> None: ...

class ReplyStarted(_message.Message):
    __slots__ = ("user_message", "assistant_message")
    USER_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ASSISTANT_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    user_message: Message
    assistant_message: Message
    def __init__(self, user_message: _Optional[_Union[Message, _Mapping]] = ..., assistant_message: _Optional[_Union[Message, _Mapping]] = ...) -> None: ...

class ReplyDelta(_message.Message):
    __slots__ = ("text", "offset", "generation")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    text: str
    offset: int
    generation: int
    def __init__(self, text: _Optional[str] = ..., offset: _Optional[int] = ..., generation: _Optional[int] = ...) -> None: ...

class ReplyRewind(_message.Message):
    __slots__ = ("offset", "generation")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    offset: int
    generation: int
    def __init__(self, offset: _Optional[int] = ..., generation: _Optional[int] = ...) -> None: ...

class ReplyCompleted(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: Message
    def __init__(self, message: _Optional[_Union[Message, _Mapping]] = ...) -> None: ...

class StreamReplyResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: ReplyEvent
    def __init__(self, event: _Optional[_Union[ReplyEvent, _Mapping]] = ...) -> None: ...

class ResumeReplyRequest(_message.Message):
    __slots__ = ("message_id", "offset", "generation")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    offset: int
    generation: int
    def __init__(self, message_id: _Optional[str] = ..., offset: _Optional[int] = ..., generation: _Optional[int] = ...) -> None: ...

class ResumeReplyResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: ReplyEvent
    def __init__(self, event: _Optional[_Union[ReplyEvent, _Mapping]] = ...) -> None: ...

class CancelReplyRequest(_message.Message):
    __slots__ = ("message_id",)
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    def __init__(self, message_id: _Optional[str] = ...) -> None: ...

class CancelReplyResponse(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: Message
    def __init__(self, message: _Optional[_Union[Message, _Mapping]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "next_page_token")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[Model]
    next_page_token: str
    def __init__(self, models: _Optional[_Iterable[_Union[Model, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class SearchMessagesRequest(_message.Message):
    __slots__ = ("query", "page_size", "page_token", "scope")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    query: str
    page_size: int
    page_token: str
    scope: ConversationScope
    def __init__(self, query: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., scope: _Optional[_Union[ConversationScope, str]] = ...) -> None: ...

class SearchResult(_message.Message):
    __slots__ = ("message", "snippet", "conversation_title", "score", "on_current_branch")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SNIPPET_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_TITLE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    ON_CURRENT_BRANCH_FIELD_NUMBER: _ClassVar[int]
    message: Message
    snippet: str
    conversation_title: str
    score: float
    on_current_branch: bool
    def __init__(self, message: _Optional[_Union[Message, _Mapping]] = ..., snippet: _Optional[str] = ..., conversation_title: _Optional[str] = ..., score: _Optional[float] = ..., on_current_branch: _Optional[bool] = ...) -> None: ...

class SearchMessagesResponse(_message.Message):
    __slots__ = ("results", "next_page_token")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SearchResult]
    next_page_token: str
    def __init__(self, results: _Optional[_Iterable[_Union[SearchResult, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ExportConversationRequest(_message.Message):
    __slots__ = ("conversation_id", "format", "first_index", "omit_header", "branch_message_id")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    FIRST_INDEX_FIELD_NUMBER: _ClassVar[int]
    OMIT_HEADER_FIELD_NUMBER: _ClassVar[int]
    BRANCH_MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    format: ExportFormat
    first_index: int
    omit_header: bool
    branch_message_id: str
    def __init__(self, conversation_id: _Optional[str] = ..., format: _Optional[_Union[ExportFormat, str]] = ..., first_index: _Optional[int] = ..., omit_header: _Optional[bool] = ..., branch_message_id: _Optional[str] = ...) -> None: ...

class ExportConversationResponse(_message.Message):
    __slots__ = ("data", "content_type")
    DATA_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    content_type: str
    def __init__(self, data: _Optional[bytes] = ..., content_type: _Optional[str] = ...) -> None: ...

class Persona(_message.Message):
    __slots__ = ("name", "display_name", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    display_name: str
    description: str
    def __init__(self, name: _Optional[str] = ..., display_name: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class ListPersonasRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListPersonasResponse(_message.Message):
    __slots__ = ("personas", "next_page_token")
    PERSONAS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    personas: _containers.RepeatedCompositeFieldContainer[Persona]
    next_page_token: str
    def __init__(self, personas: _Optional[_Iterable[_Union[Persona, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CoachingSession(_message.Message):
    __slots__ = ("session_id", "conversation_id", "persona", "stage", "turns_used", "max_turns", "max_duration", "start_time", "time_left", "end_reason")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    PERSONA_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    TURNS_USED_FIELD_NUMBER: _ClassVar[int]
    MAX_TURNS_FIELD_NUMBER: _ClassVar[int]
    MAX_DURATION_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    TIME_LEFT_FIELD_NUMBER: _ClassVar[int]
    END_REASON_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    conversation_id: str
    persona: str
    stage: CoachingStage
    turns_used: int
    max_turns: int
    max_duration: _duration_pb2.Duration
    start_time: _timestamp_pb2.Timestamp
    time_left: _duration_pb2.Duration
    end_reason: EndReason
    def __init__(self, session_id: _Optional[str] = ..., conversation_id: _Optional[str] = ..., persona: _Optional[str] = ..., stage: _Optional[_Union[CoachingStage, str]] = ..., turns_used: _Optional[int] = ..., max_turns: _Optional[int] = ..., max_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., time_left: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., end_reason: _Optional[_Union[EndReason, str]] = ...) -> None: ...

class AudioClip(_message.Message):
    __slots__ = ("data", "mime_type")
    DATA_FIELD_NUMBER: _ClassVar[int]
    MIME_TYPE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    mime_type: str
    def __init__(self, data: _Optional[bytes] = ..., mime_type: _Optional[str] = ...) -> None: ...

class CoachStart(_message.Message):
    __slots__ = ("persona", "conversation_id", "session_id", "max_turns", "max_duration", "speak")
    PERSONA_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_TURNS_FIELD_NUMBER: _ClassVar[int]
    MAX_DURATION_FIELD_NUMBER: _ClassVar[int]
    SPEAK_FIELD_NUMBER: _ClassVar[int]
    persona: str
    conversation_id: str
    session_id: str
    max_turns: int
    max_duration: _duration_pb2.Duration
    speak: bool
    def __init__(self, persona: _Optional[str] = ..., conversation_id: _Optional[str] = ..., session_id: _Optional[str] = ..., max_turns: _Optional[int] = ..., max_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., speak: _Optional[bool] = ...) -> None: ...

class CoachUserTurn(_message.Message):
    __slots__ = ("text", "audio")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    text: str
    audio: AudioClip
    def __init__(self, text: _Optional[str] = ..., audio: _Optional[_Union[AudioClip, _Mapping]] = ...) -> None: ...

class CoachEnd(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CoachRequest(_message.Message):
    __slots__ = ("start", "user_turn", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    USER_TURN_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: CoachStart
    user_turn: CoachUserTurn
    end: CoachEnd
    def __init__(self, start: _Optional[_Union[CoachStart, _Mapping]] = ..., user_turn: _Optional[_Union[CoachUserTurn, _Mapping]] = ..., end: _Optional[_Union[CoachEnd, _Mapping]] = ...) -> None: ...

class CoachSessionStarted(_message.Message):
    __slots__ = ("session", "rejoined")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    REJOINED_FIELD_NUMBER: _ClassVar[int]
    session: CoachingSession
    rejoined: bool
    def __init__(self, session: _Optional[_Union[CoachingSession, _Mapping]] = ..., rejoined: _Optional[bool] = ...) -> None: ...

class CoachTurnCompleted(_message.Message):
    __slots__ = ("message", "turns_used", "time_left", "user_message", "audio")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TURNS_USED_FIELD_NUMBER: _ClassVar[int]
    TIME_LEFT_FIELD_NUMBER: _ClassVar[int]
    USER_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    message: Message
    turns_used: int
    time_left: _duration_pb2.Duration
    user_message: Message
    audio: AudioClip
    def __init__(self, message: _Optional[_Union[Message, _Mapping]] = ..., turns_used: _Optional[int] = ..., time_left: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., user_message: _Optional[_Union[Message, _Mapping]] = ..., audio: _Optional[_Union[AudioClip, _Mapping]] = ...) -> None: ...

class CoachWrapUpConfirmation(_message.Message):
    __slots__ = ("prompt", "message")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    message: Message
    def __init__(self, prompt: _Optional[str] = ..., message: _Optional[_Union[Message, _Mapping]] = ...) -> None: ...

class CoachSessionEnded(_message.Message):
    __slots__ = ("reason", "summary", "message", "session", "audio")
    REASON_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    reason: EndReason
    summary: str
    message: Message
    session: CoachingSession
    audio: AudioClip
    def __init__(self, reason: _Optional[_Union[EndReason, str]] = ..., summary: _Optional[str] = ..., message: _Optional[_Union[Message, _Mapping]] = ..., session: _Optional[_Union[CoachingSession, _Mapping]] = ..., audio: _Optional[_Union[AudioClip, _Mapping]] = ...) -> None: ...

class CoachResponse(_message.Message):
    __slots__ = ("session_started", "delta", "turn_completed", "wrap_up_confirmation", "session_ended")
    SESSION_STARTED_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    TURN_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    WRAP_UP_CONFIRMATION_FIELD_NUMBER: _ClassVar[int]
    SESSION_ENDED_FIELD_NUMBER: _ClassVar[int]
    session_started: CoachSessionStarted
    delta: ReplyDelta
    turn_completed: CoachTurnCompleted
    wrap_up_confirmation: CoachWrapUpConfirmation
    session_ended: CoachSessionEnded
    def __init__(self, session_started: _Optional[_Union[CoachSessionStarted, _Mapping]] = ..., delta: _Optional[_Union[ReplyDelta, _Mapping]] = ..., turn_completed: _Optional[_Union[CoachTurnCompleted, _Mapping]] = ..., wrap_up_confirmation: _Optional[_Union[CoachWrapUpConfirmation, _Mapping]] = ..., session_ended: _Optional[_Union[CoachSessionEnded, _Mapping]] = ...) -> None: ...

class Attachment(_message.Message):
    __slots__ = ("attachment_id", "filename", "content_type", "sniffed_content_type", "size_bytes", "sha256", "create_time")
    ATTACHMENT_ID_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SNIFFED_CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    attachment_id: str
    filename: str
    content_type: str
    sniffed_content_type: str
    size_bytes: int
    sha256: str
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, attachment_id: _Optional[str] = ..., filename: _Optional[str] = ..., content_type: _Optional[str] = ..., sniffed_content_type: _Optional[str] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class AttachmentMetadata(_message.Message):
    __slots__ = ("filename", "content_type", "size_bytes")
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    filename: str
    content_type: str
    size_bytes: int
    def __init__(self, filename: _Optional[str] = ..., content_type: _Optional[str] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class UploadAttachmentRequest(_message.Message):
    __slots__ = ("metadata", "data")
    METADATA_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    metadata: AttachmentMetadata
    data: bytes
    def __init__(self, metadata: _Optional[_Union[AttachmentMetadata, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class UploadAttachmentResponse(_message.Message):
    __slots__ = ("attachment",)
    ATTACHMENT_FIELD_NUMBER: _ClassVar[int]
    attachment: Attachment
    def __init__(self, attachment: _Optional[_Union[Attachment, _Mapping]] = ...) -> None: ...

class GetAttachmentRequest(_message.Message):
    __slots__ = ("attachment_id",)
    ATTACHMENT_ID_FIELD_NUMBER: _ClassVar[int]
    attachment_id: str
    def __init__(self, attachment_id: _Optional[str] = ...) -> None: ...

class GetAttachmentResponse(_message.Message):
    __slots__ = ("attachment",)
    ATTACHMENT_FIELD_NUMBER: _ClassVar[int]
    attachment: Attachment
    def __init__(self, attachment: _Optional[_Union[Attachment, _Mapping]] = ...) -> None: ...

class DownloadAttachmentRequest(_message.Message):
    __slots__ = ("attachment_id",)
    ATTACHMENT_ID_FIELD_NUMBER: _ClassVar[int]
    attachment_id: str
    def __init__(self, attachment_id: _Optional[str] = ...) -> None: ...

class DownloadAttachmentResponse(_message.Message):
    __slots__ = ("data", "attachment")
    DATA_FIELD_NUMBER: _ClassVar[int]
    ATTACHMENT_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    attachment: Attachment
    def __init__(self, data: _Optional[bytes] = ..., attachment: _Optional[_Union[Attachment, _Mapping]] = ...) -> None: ...

class DeleteAttachmentRequest(_message.Message):
    __slots__ = ("attachment_id",)
    ATTACHMENT_ID_FIELD_NUMBER: _ClassVar[int]
    attachment_id: str
    def __init__(self, attachment_id: _Optional[str] = ...) -> None: ...

class DeleteAttachmentResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ConversationShare(_message.Message):
    __slots__ = ("conversation_id", "user_id", "role", "create_time")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    user_id: str
    role: ShareRole
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, conversation_id: _Optional[str] = ..., user_id: _Optional[str] = ..., role: _Optional[_Union[ShareRole, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ShareConversationRequest(_message.Message):
    __slots__ = ("conversation_id", "user_id", "role")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    user_id: str
    role: ShareRole
    def __init__(self, conversation_id: _Optional[str] = ..., user_id: _Optional[str] = ..., role: _Optional[_Union[ShareRole, str]] = ...) -> None: ...

class ShareConversationResponse(_message.Message):
    __slots__ = ("share",)
    SHARE_FIELD_NUMBER: _ClassVar[int]
    share: ConversationShare
    def __init__(self, share: _Optional[_Union[ConversationShare, _Mapping]] = ...) -> None: ...

class UnshareConversationRequest(_message.Message):
    __slots__ = ("conversation_id", "user_id")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    user_id: str
    def __init__(self, conversation_id: _Optional[str] = ..., user_id: _Optional[str] = ...) -> None: ...

class UnshareConversationResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListConversationSharesRequest(_message.Message):
    __slots__ = ("conversation_id", "page_size", "page_token")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    page_size: int
    page_token: str
    def __init__(self, conversation_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListConversationSharesResponse(_message.Message):
    __slots__ = ("shares", "next_page_token")
    SHARES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    shares: _containers.RepeatedCompositeFieldContainer[ConversationShare]
    next_page_token: str
    def __init__(self, shares: _Optional[_Iterable[_Union[ConversationShare, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RegenerateReplyRequest(_message.Message):
    __slots__ = ("message_id", "request_id")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    request_id: str
    def __init__(self, message_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class RegenerateReplyResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: ReplyEvent
    def __init__(self, event: _Optional[_Union[ReplyEvent, _Mapping]] = ...) -> None: ...

class EditMessageRequest(_message.Message):
    __slots__ = ("message_id", "content", "request_id")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    content: str
    request_id: str
    def __init__(self, message_id: _Optional[str] = ..., content: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class EditMessageResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: ReplyEvent
    def __init__(self, event: _Optional[_Union[ReplyEvent, _Mapping]] = ...) -> None: ...

class SetCurrentBranchRequest(_message.Message):
    __slots__ = ("conversation_id", "message_id")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    message_id: str
    def __init__(self, conversation_id: _Optional[str] = ..., message_id: _Optional[str] = ...) -> None: ...

class SetCurrentBranchResponse(_message.Message):
    __slots__ = ("conversation",)
    CONVERSATION_FIELD_NUMBER: _ClassVar[int]
    conversation: Conversation
    def __init__(self, conversation: _Optional[_Union[Conversation, _Mapping]] = ...) -> None: ...

class ListSiblingsRequest(_message.Message):
    __slots__ = ("message_id", "page_size", "page_token")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    page_size: int
    page_token: str
    def __init__(self, message_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListSiblingsResponse(_message.Message):
    __slots__ = ("messages", "next_page_token")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    next_page_token: str
    def __init__(self, messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteMessageRequest(_message.Message):
    __slots__ = ("message_id",)
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    def __init__(self, message_id: _Optional[str] = ...) -> None: ...

class DeleteMessageResponse(_message.Message):
    __slots__ = ("conversation", "deleted_count")
    CONVERSATION_FIELD_NUMBER: _ClassVar[int]
    DELETED_COUNT_FIELD_NUMBER: _ClassVar[int]
    conversation: Conversation
    deleted_count: int
    def __init__(self, conversation: _Optional[_Union[Conversation, _Mapping]] = ..., deleted_count: _Optional[int] = ...) -> None: ...
