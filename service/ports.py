"""The seams between use cases and the outside world: small Protocols, each with an in-repo fake."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Generic, Protocol, Self, TypeVar

from service.domain import (
    ApiKey,
    Attachment,
    Completion,
    Conversation,
    ConversationScope,
    Lease,
    Message,
    ModelInfo,
    Prompt,
    SearchHit,
    Share,
)
from service.domain.coaching import CoachingSession

T = TypeVar("T")


class Provider(Protocol):
    """An LLM backend. Adapters translate their client's errors into domain errors where they enter:

    - `ModelUnavailable` when the backend cannot be reached (or answers 5xx) before any text,
    - `ModelNotFound` when it does not know the requested model,
    - `ModelFailed` when it fails after text has started to flow.
    """

    name: str
    # Whether `stream` can continue a partial reply (`Prompt.prefix`): the model writes on from that text.
    continues: bool
    # Whether the backend's models can be sent images (`ChatTurn.images`).
    takes_images: bool

    def stream(self, prompt: Prompt) -> AsyncIterator[str | Completion]:
        """Yield the reply's text pieces in order, then exactly one `Completion`. With `prompt.prefix`, the text
        continues that partial reply (the prefix itself is not yielded again)."""
        ...

    async def list_models(self) -> Sequence[ModelInfo]:
        """The models the backend offers, by name."""
        ...

    async def aclose(self) -> None:
        """Release connections, threads and loaded weights."""
        ...


class ModelCall(Protocol):
    """One model call as an observer sees it (traces and metrics); told by whoever runs the call."""

    def first_token(self) -> None: ...

    def completed(self, completion: Completion) -> None: ...

    def failed(self, error: BaseException) -> None: ...

    def end(self) -> None:
        """Always called last, once."""
        ...


class ModelCallObserver(Protocol):
    def started(self, provider: str, prompt: Prompt) -> ModelCall:
        """A model call begins (in the task that will run it to its end)."""
        ...


class QuietModelCalls:
    """A ModelCallObserver that observes nothing (tests, tools)."""

    def started(self, provider: str, prompt: Prompt) -> ModelCall:
        return _QuietCall()


class _QuietCall:
    def first_token(self) -> None:
        return None

    def completed(self, completion: Completion) -> None:
        return None

    def failed(self, error: BaseException) -> None:
        return None

    def end(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class Flush:
    """Progress of one reply in flight, written by the batched flusher under the lease it holds."""

    message_id: str
    content: str
    lease: Lease  # written only while the row is STREAMING under exactly this owner and epoch
    renewed_until: datetime
    update_time: datetime


@dataclass(frozen=True, slots=True)
class Held:
    """A STREAMING reply's lease as stored, and whether someone asked to cancel it."""

    epoch: int
    cancel_requested: bool


@dataclass(frozen=True, slots=True)
class RowsPage(Generic[T]):
    """A page read from storage: `cursor` is the storage's own keyset position after the last item."""

    items: Sequence[T]
    cursor: str | None


class ConversationRepository(Protocol):
    async def add(self, conversation: Conversation) -> None: ...

    async def get(self, conversation_id: str, *, for_update: bool = False) -> Conversation | None:
        """`for_update` locks the row until the transaction ends (serialises replies in one conversation)."""
        ...

    async def list_by_owner(self, owner: str, *, limit: int, after: str | None) -> RowsPage[Conversation]:
        """The owner's conversations, most recently updated first."""
        ...

    async def update(self, conversation: Conversation) -> None: ...

    async def touch(self, conversation_id: str, when: datetime) -> None:
        """Set `update_time`."""
        ...

    async def set_current(self, conversation_id: str, message_id: str, when: datetime) -> None:
        """Make `message_id` the current branch's leaf ("": the conversation has no messages) and set
        `update_time`."""
        ...

    async def touch_and_lock(self, conversation_id: str, when: datetime) -> Conversation | None:
        """Set `update_time` and lock the row until the transaction ends (one statement: a reply's start is on
        the first-token path); the conversation as updated, or None when there is none. A caller that then
        finds it may not use it must abandon the unit of work (nothing is committed)."""
        ...

    async def start_reply(self, conversation_id: str, reply_id: str, when: datetime) -> Conversation | None:
        """`touch_and_lock`, and make `reply_id` (a reply this transaction is about to insert) the current branch's
        leaf — in one statement where the database can —; the conversation as it was before (its leaf the one the
        reply follows), or None when there is none. A caller that then finds it may not use it, or does not insert
        the reply after all, must abandon the unit of work (nothing is committed)."""
        ...

    async def delete(self, conversation_id: str) -> None:
        """Delete the conversation and all its messages."""
        ...


class MessageRepository(Protocol):
    async def add(self, *messages: Message, lease: Lease | None = None) -> None:
        """Insert messages (in one statement), a STREAMING reply under `lease`. Raises `DuplicateRequest` when
        (owner, request_id, role) already exists; the unit of work must then be abandoned."""
        ...

    async def get(self, message_id: str) -> Message | None: ...

    async def branch(self, conversation_id: str, leaf_id: str, *, limit: int) -> Sequence[Message]:
        """The newest `limit` messages of the branch ending at `leaf_id` (the path to it from a first message),
        oldest first, each with the ids of the files it carries (`attachment_ids`); none when there is no such
        message."""
        ...

    async def list_branch(
        self, conversation_id: str, leaf_id: str, *, limit: int, after: str | None
    ) -> RowsPage[Message]:
        """A page of the branch ending at `leaf_id`, oldest first, each message with its `siblings`."""
        ...

    async def list_siblings(self, message: Message, *, limit: int, after: str | None) -> RowsPage[Message]:
        """The messages sharing `message`'s parent (itself included), oldest first, each with its `siblings`."""
        ...

    async def newest_leaf(self, conversation_id: str, under: str | None) -> str | None:
        """The newest message under `under`, itself included (the whole conversation's with None): a leaf, as a
        message is always newer than its parent. None when there is none."""
        ...

    async def streaming_under(self, conversation_id: str, message_id: str) -> Sequence[str]:
        """The STREAMING replies among `message_id` and the messages under it."""
        ...

    async def delete_subtree(self, conversation_id: str, message_id: str) -> int:
        """Delete `message_id` and every message under it; how many were deleted."""
        ...

    async def search(
        self,
        user_id: str,
        terms: tuple[str, ...],
        *,
        limit: int,
        after: str | None,
        scope: ConversationScope = ConversationScope.OWNED,
    ) -> RowsPage[SearchHit]:
        """Messages in a final state that contain every term, most relevant first, from the conversations `scope`
        gives `user_id` (theirs, shared with them, or both), on every branch (each hit says whether it is on
        its conversation's current branch)."""
        ...

    async def recent(self, conversation_id: str, *, limit: int) -> Sequence[Message]:
        """The newest `limit` messages of any branch, returned oldest first."""
        ...

    async def find_by_request(self, owner: str, request_id: str) -> Sequence[Message]:
        """The messages created by one request (user message first)."""
        ...

    async def flush(self, batch: Sequence[Flush]) -> None:
        """Write the partial content and renew the lease of replies in flight (one statement, many rows). Rows
        no longer STREAMING under the flush's lease (owner and epoch) are left untouched: fenced."""
        ...

    async def leased(self, lease_owner: str) -> dict[str, Held]:
        """STREAMING replies leased by `lease_owner`, by message id."""
        ...

    async def finish(self, message: Message, lease: Lease) -> bool:
        """Write a reply's final state (content, status, usage, finish reason, error) and clear its lease, only
        if the row is still STREAMING under `lease` (owner and epoch). False: fenced, nothing written."""
        ...

    async def request_cancel(self, message_id: str) -> None:
        """Flag a STREAMING reply so its owner stops it on its next flush."""
        ...

    async def request_cancel_all(self, conversation_id: str) -> None:
        """Flag every STREAMING reply of a conversation."""
        ...

    async def expired(self, now: datetime, *, owner: str | None = None, limit: int = 100) -> Sequence[Message]:
        """STREAMING replies whose lease expired before `now` (their replica stopped), or, with `owner`, that this
        owner held (its previous run), oldest first."""
        ...

    async def take_over(self, message: Message, lease: Lease, *, now: datetime, mine: bool = False) -> Lease | None:
        """Claim `message` (as just read by `expired`) for `lease.owner`, to continue it: one compare-and-set on
        its lease epoch — of racing replicas exactly one wins, and the previous holder is fenced — that moves
        the epoch on and records the continuation at the stored text's length. The claim holds if the lease had
        expired before `now` or, with `mine`, was already `lease.owner`'s (its previous run). Returns the lease won
        (`lease` with the new epoch), or None."""
        ...

    async def mark_abandoned(
        self,
        *,
        now: datetime,
        status: str,
        error_message: str,
        message_id: str | None = None,
        lease_owner: str | None = None,
    ) -> Sequence[str]:
        """Atomically end STREAMING replies whose lease expired before `now` (or that `lease_owner` held),
        optionally only `message_id`, moving their lease epoch on. Returns the ids this call changed, so each is
        ended exactly once."""
        ...


class ApiKeyRepository(Protocol):
    async def add(self, key: ApiKey) -> None: ...

    async def get(self, key_id: str) -> ApiKey | None: ...

    async def list(self, *, user_id: str | None, limit: int, after: str | None) -> RowsPage[ApiKey]: ...

    async def revoke(self, key_id: str, when: datetime) -> bool: ...

    async def touch(self, key_id: str, when: datetime) -> None:
        """Record `last_used_time`."""
        ...


class CoachingSessionRepository(Protocol):
    async def add(self, session: CoachingSession) -> None: ...

    async def get(self, session_id: str, *, for_update: bool = False) -> CoachingSession | None:
        """`for_update` locks the row until the transaction ends (one turn at a time per session)."""
        ...

    async def update(self, session: CoachingSession) -> None:
        """Write the stage, end reason, turns used and update time."""
        ...


class AttachmentRepository(Protocol):
    """Attachments' metadata, and which messages carry them (their bytes are in the `AttachmentStore`)."""

    async def add(self, attachment: Attachment) -> None: ...

    async def get(self, attachment_id: str) -> Attachment | None: ...

    async def get_many(self, attachment_ids: Sequence[str]) -> Mapping[str, Attachment]:
        """The attachments among `attachment_ids` that exist, by id."""
        ...

    async def delete(self, attachment_id: str) -> None:
        """Delete the metadata; messages that carried it no longer do."""
        ...

    async def link(self, message_id: str, attachment_ids: Sequence[str]) -> None:
        """Record that a (just added) message carries these attachments, in this order."""
        ...

    async def linked(self, message_ids: Sequence[str]) -> Mapping[str, tuple[Attachment, ...]]:
        """The attachments each of these messages carries, in order (messages without any are left out)."""
        ...

    async def shared_with(self, attachment_id: str, user_id: str) -> bool:
        """Whether a message carrying the attachment is in a conversation shared with `user_id`."""
        ...


class ShareRepository(Protocol):
    """Who may read which conversation besides its owner."""

    async def add(self, share: Share) -> Share:
        """Store the grant, or return the one already stored for (conversation, user) unchanged."""
        ...

    async def get(self, conversation_id: str, user_id: str) -> Share | None: ...

    async def remove(self, conversation_id: str, user_id: str) -> bool:
        """Revoke a grant; False when there was none."""
        ...

    async def list_by_conversation(self, conversation_id: str, *, limit: int, after: str | None) -> RowsPage[Share]:
        """A conversation's grants, by user id."""
        ...

    async def conversations(
        self, user_id: str, scope: ConversationScope, *, limit: int, after: str | None
    ) -> RowsPage[Conversation]:
        """The conversations `scope` gives `user_id` (theirs, shared with them, or both), most recently updated
        first, with the same cursors as `ConversationRepository.list_by_owner`."""
        ...


class AttachmentStore(Protocol):
    """Where attachments' bytes live, by key (the attachment id): the database by default
    (service/storage/attachments.py), or an object store. Writes are not part of a unit of work: callers write
    the bytes first, then the metadata, and delete the bytes if the metadata cannot be written."""

    async def put(self, key: str, chunks: AsyncIterable[bytes]) -> None:
        """Store the bytes under `key`, all or nothing. It may hold a transaction or connection while it iterates,
        so callers pass bytes already received (never a slow client's stream)."""
        ...

    def get(self, key: str) -> AsyncIterator[bytes]:
        """The bytes under `key`, in chunks; no transaction is held between chunks. Nothing for an unknown key."""
        ...

    async def delete(self, key: str) -> None:
        """Delete the bytes under `key`, if any."""
        ...


class UnitOfWork(Protocol):
    """One database transaction. `async with uow:` begins it; `commit()` ends it; leaving without commit
    rolls back."""

    @property
    def conversations(self) -> ConversationRepository: ...

    @property
    def messages(self) -> MessageRepository: ...

    @property
    def api_keys(self) -> ApiKeyRepository: ...

    @property
    def coaching_sessions(self) -> CoachingSessionRepository: ...

    @property
    def attachments(self) -> AttachmentRepository: ...

    @property
    def shares(self) -> ShareRepository: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    async def commit(self) -> None: ...


class Notifications(Protocol):
    """Best-effort broadcast between the replicas sharing a database (Postgres LISTEN/NOTIFY), and within
    this process. Readers must not depend on delivery: a lost notification may cost latency (followers also
    poll), never correctness."""

    def subscribe(self, channel: str, callback: Callable[[str], None]) -> None:
        """Call `callback(payload)` on the event loop for each notification on `channel`, from any replica
        (this one included)."""
        ...

    def publish(self, channel: str, payload: str) -> None:
        """Send `payload` (at most 7,000 bytes) on `channel`; never blocks, dropped while disconnected."""
        ...

    @property
    def connected(self) -> bool:
        """Whether notifications from other replicas can currently arrive."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class UnitOfWorkFactory(Protocol):
    def __call__(self, *, autocommit: bool = False) -> UnitOfWork:
        """A unit of work. With `autocommit`, each statement is a transaction of its own, committed as it runs (so
        `commit()` has nothing left to do, and leaving without it rolls nothing back): for one write that stands
        alone, such as a reply's end — on Postgres one round trip instead of three (BEGIN, the write, COMMIT)."""
        ...


Clock = Callable[[], datetime]


@dataclass(frozen=True, slots=True)
class Audio:
    """Encoded audio and its media type (`audio/wav`, `audio/ogg`, ...)."""

    data: bytes
    mime_type: str


class Transcriber(Protocol):
    """Speech to text. Adapters raise `Unavailable` when the backend cannot be reached or fails, and
    `FailedPrecondition` (saying what to configure) when there is no backend."""

    def require(self) -> None:
        """Raise `FailedPrecondition` saying what to configure when there is no transcriber."""
        ...

    async def transcribe(self, audio: Audio) -> str: ...

    async def aclose(self) -> None: ...


class Synthesizer(Protocol):
    """Text to speech; errors as for `Transcriber`."""

    def require(self) -> None:
        """Raise `FailedPrecondition` saying what to configure when there is no synthesizer."""
        ...

    async def synthesize(self, text: str) -> Audio: ...

    async def aclose(self) -> None: ...
