"""Domain model: entities, enums, errors and pure rules. Imports nothing from grpc, SQL or model clients."""

from __future__ import annotations

import enum
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")


class Role(enum.StrEnum):
    USER = "user"
    ASSISTANT = "assistant"
    SYSTEM = "system"


class MessageStatus(enum.StrEnum):
    COMPLETED = "completed"
    STREAMING = "streaming"
    CANCELLED = "cancelled"
    FAILED = "failed"
    INTERRUPTED = "interrupted"

    @property
    def is_final(self) -> bool:
        return self is not MessageStatus.STREAMING


class FinishReason(enum.StrEnum):
    NONE = ""
    STOP = "stop"
    LENGTH = "length"
    CONTENT_FILTER = "content_filter"


class ConversationScope(enum.Enum):
    """Which conversations a listing or search covers: the caller's own, those shared with the caller, or both."""

    OWNED = "owned"
    SHARED = "shared"
    ALL = "all"

    @property
    def owned(self) -> bool:
        return self is not ConversationScope.SHARED

    @property
    def shared(self) -> bool:
        return self is not ConversationScope.OWNED


class ShareRole(enum.StrEnum):
    VIEWER = "viewer"  # reads the conversation (messages, replies live, search, export); never writes


@dataclass(frozen=True, slots=True)
class Share:
    """A grant: the conversation's owner let `user_id` read it."""

    conversation_id: str
    user_id: str
    role: ShareRole
    create_time: datetime


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file a user uploaded (its bytes are in the attachment store, under its id)."""

    id: str
    owner: str
    filename: str
    content_type: str  # as declared (or as sniffed, when none was declared)
    sniffed_content_type: str  # what the bytes are, by their signature
    size_bytes: int
    sha256: str  # hex digest of the bytes
    create_time: datetime


@dataclass(frozen=True, slots=True)
class Conversation:
    id: str
    owner: str
    title: str
    model: str
    persona: str
    system_prompt: str
    create_time: datetime
    update_time: datetime
    current_message_id: str = ""  # the current branch's leaf; empty while there are no messages


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated: bool = False  # the provider did not count them: `estimate_tokens` and text pieces did


@dataclass(frozen=True, slots=True)
class Siblings:
    """Where a message stands among the messages sharing its parent (what a UI pages through: "< 2/3 >")."""

    count: int
    index: int  # from 0, oldest first
    previous_id: str = ""
    next_id: str = ""


@dataclass(frozen=True, slots=True)
class Message:
    id: str
    conversation_id: str
    owner: str
    role: Role
    content: str
    status: MessageStatus
    create_time: datetime
    update_time: datetime
    model: str = ""
    request_id: str = ""
    usage: Usage = field(default_factory=Usage)
    finish_reason: FinishReason = FinishReason.NONE
    error_message: str = ""
    error_reason: str = ""  # a FAILED reply's error reason (`DomainError.reason`), so every reader gets one status
    # Each time another replica took the reply over and continued it: (the generation it started, the offset it
    # continued from). Text a reader got past such an offset from an earlier generation was never stored.
    continued_at: tuple[tuple[int, int], ...] = ()
    attachment_ids: tuple[str, ...] = ()  # files a user message carries, in order
    parent_id: str = ""  # the message this one follows in the tree; empty for a first message
    siblings: Siblings | None = None  # read by the listings that show it, else None

    def rewind_for(self, offset: int, generation: int) -> tuple[int, int] | None:
        """Where a reader at `offset`, whose text came from `generation` (0: unknown), must rewind to, and the
        generation that continued from there: the first continuation after its generation, when the reader got
        past its offset; else None."""
        for started, base in self.continued_at:
            if started > generation:
                return (base, started) if offset > base else None
        return None

    @property
    def generation(self) -> int:
        """The generation writing (or that wrote) the text's end: 1, plus one per continuation."""
        return self.continued_at[-1][0] if self.continued_at else 1


@dataclass(frozen=True, slots=True)
class Lease:
    """A replica's claim on a reply in flight. Every write a generation makes is fenced by (owner, epoch): the
    epoch only grows, so a replica that lost the lease (paused, cut off, judged dead) can never write again."""

    owner: str
    epoch: int
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller."""

    user_id: str
    scopes: frozenset[str] = frozenset()
    valid_until: float | None = None  # unix time the credential stops being valid (a JWT's exp + leeway)

    @property
    def is_admin(self) -> bool:
        return "admin" in self.scopes


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    user_id: str
    secret_hash: str
    scopes: frozenset[str]
    create_time: datetime
    name: str = ""
    last_used_time: datetime | None = None
    revoke_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    provider: str
    family: str = ""
    parameter_size: str = ""
    quantization_level: str = ""
    size_bytes: int = 0


@dataclass(frozen=True, slots=True)
class Image:
    """An image as a model receives it."""

    media_type: str
    data: bytes


@dataclass(frozen=True, slots=True)
class ChatTurn:
    """One message as the model sees it. `attachments` are the files it carries, not yet read; before the
    provider gets the turn they are read into `content` (text files) and `images`."""

    role: Role
    content: str
    attachments: tuple[Attachment, ...] = ()
    images: tuple[Image, ...] = ()


@dataclass(frozen=True, slots=True)
class Prompt:
    """Everything a provider needs to generate one reply."""

    model: str
    turns: tuple[ChatTurn, ...]
    max_tokens: int
    conversation_id: str = ""
    # The assistant text already written (a reply continued after its replica stopped): the model continues it.
    prefix: str = ""


@dataclass(frozen=True, slots=True)
class Completion:
    """The provider's closing report for a reply; the last item of a provider stream."""

    finish_reason: FinishReason = FinishReason.STOP
    usage: Usage = field(default_factory=Usage)


@dataclass(frozen=True, slots=True)
class SearchHit:
    """A message that matched a search, with an excerpt (`**` around matched words) and its relevance."""

    message: Message
    conversation_title: str
    snippet: str
    score: float
    on_current_branch: bool = True  # search covers every branch; this says whether the hit is on the current one


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: Sequence[T]
    next_page_token: str = ""


# ---------------------------------------------------------------------------------------------- errors


# How big an error may get, whatever caller's values it repeats: a status travels in response metadata, and
# one over the client's limit (8 KiB by default) reaches it as RESOURCE_EXHAUSTED instead of its real code.
# A failed reply also keeps its error's message, in a 500-character column. Sizes are UTF-8 bytes.
ECHO_CHARS = 64  # of a caller's value, repeated in a message or as a metadata value
MESSAGE_BYTES = 400
METADATA_ENTRIES = 4
METADATA_KEY_BYTES = 64
VIOLATIONS = 4
FIELD_BYTES = 100
DESCRIPTION_BYTES = 200
ELLIPSIS = "…"


REPLACEMENT = "\ufffd"
# NUL, and any surrogate that is not part of a well-formed (high, low) pair.
_UNSTORABLE = re.compile(r"\x00|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]")
_PAIR = re.compile(r"[\ud800-\udbff][\udc00-\udfff]")


def _joined(match: re.Match[str]) -> str:
    high, low = match.group()[0], match.group()[1]
    return chr(0x10000 + ((ord(high) - 0xD800) << 10) + (ord(low) - 0xDC00))


def clean(text: str) -> str:
    """`text` as every database and protobuf string can hold it: surrogate pairs (as JSON escapes produce them)
    joined into their character, and NUL and lone surrogates replaced by U+FFFD."""
    if text.isascii():
        return text.replace("\x00", REPLACEMENT) if "\x00" in text else text
    return _PAIR.sub(_joined, _UNSTORABLE.sub(REPLACEMENT, text))


def _cut(text: str, max_bytes: int) -> str:
    """`text`, cleaned, or as much of it as fits `max_bytes` of UTF-8 with an ellipsis after."""
    text = clean(text)
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text
    kept = data[: max_bytes - len(ELLIPSIS.encode())].decode("utf-8", "ignore")
    return kept + ELLIPSIS


def shown(value: str) -> str:
    """A caller's value as an error repeats it: at most ECHO_CHARS characters, ending with an ellipsis when
    cut. Quote it with !r in a message."""
    value = clean(value)
    return value if len(value) <= ECHO_CHARS else value[: ECHO_CHARS - 1] + ELLIPSIS


@dataclass(frozen=True, slots=True)
class FieldViolation:
    field: str
    description: str


class DomainError(Exception):
    """Base of the errors the service reports to callers. `message` is always safe to show, and it and the
    metadata are bounded here, so no error can outgrow what a status may carry."""

    reason = "ERROR"

    def __init__(self, message: str, *, metadata: Mapping[str, str] | None = None) -> None:
        self.message = _cut(message, MESSAGE_BYTES)
        super().__init__(self.message)
        entries = list((metadata or {}).items())[:METADATA_ENTRIES]
        self.metadata: dict[str, str] = {_cut(key, METADATA_KEY_BYTES): shown(value) for key, value in entries}


class InvalidArgument(DomainError):
    reason = "INVALID_ARGUMENT"

    def __init__(self, *violations: FieldViolation) -> None:
        violations = tuple(
            FieldViolation(_cut(v.field, FIELD_BYTES), _cut(v.description, DESCRIPTION_BYTES))
            for v in violations[:VIOLATIONS]
        )
        fields = ", ".join(v.field for v in violations)
        super().__init__(f"invalid {fields}: " + "; ".join(v.description for v in violations))
        self.violations = violations

    @classmethod
    def field(cls, name: str, description: str) -> InvalidArgument:
        return cls(FieldViolation(name, description))


class Unauthenticated(DomainError):
    reason = "UNAUTHENTICATED"


class PermissionDenied(DomainError):
    reason = "PERMISSION_DENIED"


class NotFound(DomainError):
    reason = "NOT_FOUND"


class FailedPrecondition(DomainError):
    reason = "FAILED_PRECONDITION"


class OutOfRange(DomainError):
    reason = "OUT_OF_RANGE"

    @classmethod
    def past_the_end(cls, offset: int, length: int) -> OutOfRange:
        """A reader asked for a reply's text from `offset`, past the end of its final `length` characters."""
        return cls(
            f"offset {offset} is past the end of the reply ({length} characters)",
            metadata={"offset": str(offset), "length": str(length)},
        )


class ResourceExhausted(DomainError):
    reason = "RATE_LIMITED"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message, metadata={"retryAfterSeconds": f"{retry_after:.3f}"})
        self.retry_after = retry_after


class Unavailable(DomainError):
    """A dependency (database, model provider) cannot be reached; retrying later may work."""

    reason = "UNAVAILABLE"


class ModelUnavailable(Unavailable):
    reason = "MODEL_UNAVAILABLE"


class ModelFailed(Unavailable):
    """The model provider failed after the reply had started."""

    reason = "MODEL_FAILED"


class ModelNotFound(FailedPrecondition):
    reason = "MODEL_NOT_FOUND"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"model {shown(model)!r} is not available from the configured provider", metadata={"model": model}
        )
        self.model = model


class DeadlineExceeded(DomainError):
    reason = "DEADLINE_EXCEEDED"


def reply_error(message: Message) -> DomainError:
    """The error every reader of a FAILED reply gets — live, resumed, attached by a retry, on any replica — made
    from what is stored, so one reply is never an error to one reader and a success to the next."""
    if message.error_reason == ModelNotFound.reason:
        return ModelNotFound(message.model)
    kind = ModelUnavailable if message.error_reason == ModelUnavailable.reason else ModelFailed
    return kind(message.error_message or "the reply failed", metadata={"messageId": message.id})


class DuplicateRequest(Exception):
    """Storage refused a second message for the same (owner, request_id, role); never reaches a caller."""


# ---------------------------------------------------------------------------------------------- rules


def new_id() -> str:
    return str(uuid.uuid4())


def check_id(field_name: str, value: str) -> str:
    """Validate a resource id (a UUID) and return it in canonical form."""
    if not value:
        raise InvalidArgument.field(field_name, "is required")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise InvalidArgument.field(field_name, "must be a UUID") from None


REQUEST_ID_MAX = 64


def check_request_id(value: str) -> str:
    if len(value) > REQUEST_ID_MAX or not value.isascii() or not value.isprintable():
        raise InvalidArgument.field("request_id", f"must be at most {REQUEST_ID_MAX} printable ASCII characters")
    return value


def check_text(field_name: str, value: str, *, max_bytes: int, required: bool) -> str:
    if required and not value.strip():
        raise InvalidArgument.field(field_name, "must not be empty")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise InvalidArgument.field(field_name, f"is {size} bytes; the limit is {max_bytes}")
    if "\x00" in value:
        raise InvalidArgument.field(field_name, "must not contain NUL characters")
    return value


# Short strings kept in columns of these sizes (service/storage/tables.py); longer ones are refused before
# storage, where Postgres would fail the statement.
TITLE_MAX = 200
MODEL_NAME_MAX = 200
PERSONA_NAME_MAX = 64


def check_name(field_name: str, value: str, *, max_chars: int) -> str:
    """A short stored string (a title, a model or persona name): at most `max_chars` characters, and no NUL
    (Postgres text cannot hold one)."""
    if len(value) > max_chars:
        raise InvalidArgument.field(field_name, f"must be at most {max_chars} characters")
    if "\x00" in value:
        raise InvalidArgument.field(field_name, "must not contain NUL characters")
    return value


# google.protobuf.Duration's range: about 10,000 years either way, nanos of the same sign as the seconds.
DURATION_SECONDS_MAX = 315_576_000_000
_NANOS_MAX = 999_999_999


def duration_of(field_name: str, seconds: int, nanos: int) -> timedelta:
    """A Duration's value as a timedelta; one outside the Duration's range is INVALID_ARGUMENT (some would
    not even fit a timedelta)."""
    in_range = abs(seconds) <= DURATION_SECONDS_MAX and abs(nanos) <= _NANOS_MAX
    if not in_range or (seconds > 0 > nanos) or (seconds < 0 < nanos):
        raise InvalidArgument.field(
            field_name, f"must be a valid Duration: at most {DURATION_SECONDS_MAX} seconds either way"
        )
    return timedelta(seconds=seconds, microseconds=int(nanos / 1000))


class Need(enum.Enum):
    """What a caller does with a resource: READ it (its owner, and the users it is shared with), or WRITE it —
    change it or use it for something new (its owner only)."""

    READ = "read"
    WRITE = "write"


class Owned(Protocol):
    @property
    def owner(self) -> str: ...


def check_access(resource: Owned | None, principal: Principal, kind: str, *, need: Need, shared: bool = False) -> None:
    """The access rule, for every resource: a missing one is NOT_FOUND; its owner may do anything; a user it is
    `shared` with (a viewer) may READ it; anyone else, and a viewer who would WRITE, is PERMISSION_DENIED."""
    if resource is None:
        raise NotFound(f"{kind} not found")
    if resource.owner == principal.user_id or (shared and need is Need.READ):
        return
    if shared:
        raise PermissionDenied(f"the {kind} is shared with you read-only")
    raise PermissionDenied(f"the {kind} belongs to another user")


async def check_shared_access(
    resource: Owned | None, principal: Principal, kind: str, *, need: Need, granted: Callable[[], Awaitable[bool]]
) -> None:
    """`check_access` for a resource that may be shared: the caller's grant is looked up (`granted()`) only when
    the caller is not the owner, so the owner's own path never pays for it."""
    shared = resource is not None and resource.owner != principal.user_id and await granted()
    check_access(resource, principal, kind, need=need, shared=shared)


def estimate_tokens(text: str) -> int:
    """A provider-neutral token estimate (about 4 characters a token, plus per-message framing)."""
    return len(text) // 4 + 4


# Media types a model receives as images (Ollama's `images`, OpenAI's `image_url` parts); text files go into the
# turn's text. Any other file can be stored and shared, but not sent to a model.
PROMPT_IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
_TEXT_APPLICATION_TYPES = frozenset(
    {"application/json", "application/xml", "application/yaml", "application/x-yaml", "application/toml",
     "application/javascript", "application/x-ndjson", "application/sql", "application/x-sh"}
)  # fmt: skip
IMAGE_TOKENS = 256  # a rough cost of one image in a vision model's context


def is_text_type(media_type: str) -> bool:
    """Whether files of `media_type` are text (UTF-8) that a model can read as part of a message."""
    return (
        media_type.startswith("text/")
        or media_type in _TEXT_APPLICATION_TYPES
        or media_type.endswith(("+json", "+xml", "+yaml"))
    )


def attachment_tokens(attachment: Attachment) -> int:
    """What a file costs in the model's context: an image a fixed amount, a text file its estimated tokens (from
    its size in bytes: at least its characters, so never an underestimate)."""
    if attachment.content_type in PROMPT_IMAGE_TYPES:
        return IMAGE_TOKENS
    return attachment.size_bytes // 4 + 4


def turn_tokens(turn: ChatTurn, count: Callable[[str], int] = estimate_tokens) -> int:
    return count(turn.content) + sum(attachment_tokens(a) for a in turn.attachments)


def history_window(
    system: ChatTurn | None,
    history: Sequence[ChatTurn],
    *,
    budget: int,
    count: Callable[[str], int] = estimate_tokens,
) -> tuple[ChatTurn, ...]:
    """The system turn plus the newest whole messages of `history` (oldest first) that fit `budget` tokens.

    The newest message is always kept, even when it alone exceeds the budget: the model must see the question.
    """
    remaining = budget - (count(system.content) if system else 0)
    kept: list[ChatTurn] = []
    for turn in reversed(history):
        cost = turn_tokens(turn, count)
        if kept and cost > remaining:
            break
        kept.append(turn)
        remaining -= cost
    kept.reverse()
    return ((system,) if system else ()) + tuple(kept)


SEARCH_QUERY_MAX = 500
SEARCH_TERMS_MAX = 32
_WORD = re.compile(r"\w+")


def search_terms(query: str) -> tuple[str, ...]:
    """The words of a search query, lower-cased; every one must match. Operators and punctuation are dropped,
    so no input can be a syntax error in either database's query language."""
    if len(query) > SEARCH_QUERY_MAX:
        raise InvalidArgument.field("query", f"must be at most {SEARCH_QUERY_MAX} characters")
    terms = tuple(dict.fromkeys(word.lower() for word in _WORD.findall(query)))
    if not terms:
        raise InvalidArgument.field("query", "must contain at least one word")
    return terms[:SEARCH_TERMS_MAX]
