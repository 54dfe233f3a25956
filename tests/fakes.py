"""In-memory fakes of the ports (storage, provider, clock) for the unit tests.

They follow the SQL adapters' observable behaviour (ordering, keyset cursors, status guards, leases) and stay
simple enough to be obviously right. `FakeStorage` serialises units of work with one lock, like the SQLite
adapter does, so each unit of work sees a consistent copy of the committed state and publishes it on commit.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

from service.domain import (
    ApiKey,
    Attachment,
    Completion,
    Conversation,
    ConversationScope,
    DuplicateRequest,
    FinishReason,
    Lease,
    Message,
    MessageStatus,
    ModelFailed,
    ModelInfo,
    ModelNotFound,
    ModelUnavailable,
    Prompt,
    SearchHit,
    Share,
    Siblings,
    Unavailable,
    Usage,
)
from service.domain.coaching import CoachingSession
from service.ports import AttachmentStore, Clock, Flush, Held, Provider, RowsPage, UnitOfWorkFactory
from service.storage import cursors

T = TypeVar("T")

# ---------------------------------------------------------------------------------------------- storage


@dataclass(frozen=True)
class MessageRow:
    """A stored message plus the columns the domain object does not carry."""

    message: Message
    seq: int
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    cancel_requested: bool = False
    lease_epoch: int = 0


@dataclass
class StorageState:
    conversations: dict[str, Conversation] = field(default_factory=dict)
    messages: dict[str, MessageRow] = field(default_factory=dict)
    api_keys: dict[str, ApiKey] = field(default_factory=dict)
    # Every time a reply was written out of STREAMING (finish or mark_abandoned): (message id, status).
    endings: list[tuple[str, MessageStatus]] = field(default_factory=list)
    next_seq: int = 1
    coaching_sessions: dict[str, CoachingSession] = field(default_factory=dict)
    attachments: dict[str, Attachment] = field(default_factory=dict)
    links: dict[str, tuple[str, ...]] = field(default_factory=dict)  # message id -> attachment ids, in order
    shares: dict[tuple[str, str], Share] = field(default_factory=dict)  # (conversation id, user id) -> grant

    def copy(self) -> StorageState:
        # Rows are frozen, so copying the containers is a full snapshot.
        return StorageState(
            dict(self.conversations),
            dict(self.messages),
            dict(self.api_keys),
            list(self.endings),
            self.next_seq,
            dict(self.coaching_sessions),
            dict(self.attachments),
            dict(self.links),
            dict(self.shares),
        )

    def visible(self, user_id: str, scope: ConversationScope, conversation_id: str) -> bool:
        """Whether `scope` gives `user_id` the conversation (like service/storage/shares.py `visible_to`)."""
        conversation = self.conversations.get(conversation_id)
        owned = conversation is not None and conversation.owner == user_id
        shared = (conversation_id, user_id) in self.shares
        return (scope.owned and owned) or (scope.shared and shared)


class FakeStorage:
    """The shared, committed state, and the unit-of-work factory over it (`storage.unit_of_work`)."""

    def __init__(self) -> None:
        self.state = StorageState()
        self.unavailable = False  # set to make every new unit of work raise `Unavailable`
        self._lock = asyncio.Lock()
        self._commit_waiters: list[asyncio.Event] = []

    def unit_of_work(self, *, autocommit: bool = False) -> FakeUnitOfWork:
        return FakeUnitOfWork(self, autocommit=autocommit)

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Return once `condition()` holds, checking after each commit (bound it with `asyncio.timeout`)."""
        while not condition():
            committed = asyncio.Event()
            self._commit_waiters.append(committed)
            await committed.wait()

    def _published(self, state: StorageState) -> None:
        self.state = state
        waiters, self._commit_waiters = self._commit_waiters, []
        for waiter in waiters:
            waiter.set()

    # Read-only views of the committed state, for assertions.

    def conversation(self, conversation_id: str) -> Conversation | None:
        return self.state.conversations.get(conversation_id)

    def message(self, message_id: str) -> Message | None:
        row = self.state.messages.get(message_id)
        return row.message if row else None

    def row(self, message_id: str) -> MessageRow | None:
        return self.state.messages.get(message_id)

    def messages_in(self, conversation_id: str) -> list[Message]:
        rows = _by_seq(self.state.messages.values())
        return [r.message for r in rows if r.message.conversation_id == conversation_id]

    def api_key(self, key_id: str) -> ApiKey | None:
        return self.state.api_keys.get(key_id)


class _Transaction:
    def __init__(self, state: StorageState) -> None:
        self._state = state
        self.aborted = False

    @property
    def state(self) -> StorageState:
        if self.aborted:  # as on Postgres: after a failed statement the transaction only accepts a rollback
            raise RuntimeError("the transaction is aborted (DuplicateRequest); abandon this unit of work")
        return self._state


class FakeUnitOfWork:
    """Implements `ports.UnitOfWork` over a copy of the committed state; `commit()` publishes the copy. With
    `autocommit` leaving publishes it too: every statement would have been committed as it ran (no other unit of
    work runs meanwhile: the storage's lock is held)."""

    conversations: FakeConversations
    messages: FakeMessages
    api_keys: FakeApiKeys
    coaching_sessions: FakeCoachingSessions
    attachments: FakeAttachments
    shares: FakeShares

    def __init__(self, storage: FakeStorage, *, autocommit: bool = False) -> None:
        self._storage = storage
        self._autocommit = autocommit
        self._tx: _Transaction | None = None

    async def __aenter__(self) -> Self:
        await self._storage._lock.acquire()
        if self._storage.unavailable:
            self._storage._lock.release()
            raise Unavailable("the database is unavailable; retry shortly")
        self._begin()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._autocommit and self._tx is not None and not self._tx.aborted:
            self._storage._published(self._tx.state)
        self._tx = None  # leaving without commit discards the changes
        self._storage._lock.release()
        # Like returning a connection to a real pool (a reset round trip): leaving a unit of work is a point
        # where the caller can be cancelled, after its commit.
        await asyncio.sleep(0)

    async def commit(self) -> None:
        assert self._tx is not None, "commit outside `async with`"
        self._storage._published(self._tx.state)
        self._begin()  # like SQLAlchemy's autobegin: later statements run in a new transaction

    def _begin(self) -> None:
        self._tx = _Transaction(self._storage.state.copy())
        self.conversations = FakeConversations(self._tx)
        self.messages = FakeMessages(self._tx)
        self.api_keys = FakeApiKeys(self._tx)
        self.coaching_sessions = FakeCoachingSessions(self._tx)
        self.attachments = FakeAttachments(self._tx)
        self.shares = FakeShares(self._tx)


def _page(items: list[T], limit: int, cursor_of: Callable[[T], str]) -> RowsPage[T]:
    if len(items) > limit:
        items = items[:limit]
        return RowsPage(items, cursor_of(items[-1]))
    return RowsPage(items, None)


def _by_seq(rows: Iterable[MessageRow]) -> list[MessageRow]:
    return sorted(rows, key=lambda r: r.seq)


class FakeConversations:
    def __init__(self, tx: _Transaction) -> None:
        self._tx = tx

    async def add(self, conversation: Conversation) -> None:
        conversations = self._tx.state.conversations
        if conversation.id in conversations:
            raise ValueError(f"duplicate conversation id {conversation.id}")
        conversations[conversation.id] = conversation

    async def get(self, conversation_id: str, *, for_update: bool = False) -> Conversation | None:
        return self._tx.state.conversations.get(conversation_id)  # units of work are serialised: no lock needed

    async def list_by_owner(self, owner: str, *, limit: int, after: str | None) -> RowsPage[Conversation]:
        items = [c for c in self._tx.state.conversations.values() if c.owner == owner]
        items.sort(key=lambda c: (c.update_time, c.id), reverse=True)
        if after is not None:
            key = cursors.read_activity(after)
            items = [c for c in items if (c.update_time, c.id) < key]
        return _page(items, limit, lambda c: cursors.activity(c.update_time, c.id))

    async def update(self, conversation: Conversation) -> None:
        conversations = self._tx.state.conversations
        current = conversations.get(conversation.id)
        if current is not None:
            conversations[conversation.id] = dataclasses.replace(
                conversation,
                owner=current.owner,
                create_time=current.create_time,
                current_message_id=current.current_message_id,
            )

    async def set_current(self, conversation_id: str, message_id: str, when: datetime) -> None:
        conversations = self._tx.state.conversations
        if conversation_id in conversations:
            conversations[conversation_id] = dataclasses.replace(
                conversations[conversation_id], current_message_id=message_id, update_time=when
            )

    async def touch(self, conversation_id: str, when: datetime) -> None:
        conversations = self._tx.state.conversations
        if conversation_id in conversations:
            conversations[conversation_id] = dataclasses.replace(conversations[conversation_id], update_time=when)

    async def touch_and_lock(self, conversation_id: str, when: datetime) -> Conversation | None:
        await self.touch(conversation_id, when)
        return self._tx.state.conversations.get(conversation_id)

    async def start_reply(self, conversation_id: str, reply_id: str, when: datetime) -> Conversation | None:
        before = await self.touch_and_lock(conversation_id, when)
        if before is not None:
            await self.set_current(conversation_id, reply_id, when)
        return before

    async def delete(self, conversation_id: str) -> None:
        state = self._tx.state
        gone = {k for k, r in state.messages.items() if r.message.conversation_id == conversation_id}
        state.links = {k: ids for k, ids in state.links.items() if k not in gone}
        state.shares = {k: s for k, s in state.shares.items() if s.conversation_id != conversation_id}
        state.messages = {k: r for k, r in state.messages.items() if r.message.conversation_id != conversation_id}
        state.coaching_sessions = {
            k: s for k, s in state.coaching_sessions.items() if s.conversation_id != conversation_id
        }
        state.conversations.pop(conversation_id, None)


class FakeMessages:
    def __init__(self, tx: _Transaction) -> None:
        self._tx = tx

    def _rows(self) -> dict[str, MessageRow]:
        return self._tx.state.messages

    def _set(self, row: MessageRow, **message_changes: Any) -> MessageRow:
        updated = dataclasses.replace(row, message=dataclasses.replace(row.message, **message_changes))
        self._rows()[row.message.id] = updated
        return updated

    async def add(self, *messages: Message, lease: Lease | None = None) -> None:
        for message in messages:
            self._add_one(message, lease if message.status is MessageStatus.STREAMING else None)

    def _add_one(self, message: Message, lease: Lease | None) -> None:
        state = self._tx.state
        message = dataclasses.replace(message, attachment_ids=())  # like a row: the links are stored apart
        if message.id in state.messages or any(_same_request(r.message, message) for r in state.messages.values()):
            self._tx.aborted = True
            raise DuplicateRequest(message.request_id)
        if message.conversation_id not in state.conversations:
            raise LookupError(f"foreign key: no conversation {message.conversation_id}")
        if lease is None:
            state.messages[message.id] = MessageRow(message, state.next_seq)
        else:
            state.messages[message.id] = MessageRow(
                message, state.next_seq, lease.owner, lease.expires_at, lease_epoch=lease.epoch
            )
        state.next_seq += 1

    async def get(self, message_id: str) -> Message | None:
        row = self._rows().get(message_id)
        return row.message if row else None

    def _path(self, conversation_id: str, leaf_id: str) -> list[MessageRow]:
        """The branch ending at `leaf_id`, from its first message."""
        path: list[MessageRow] = []
        row = self._rows().get(leaf_id)
        while row is not None and row.message.conversation_id == conversation_id:
            path.append(row)
            row = self._rows().get(row.message.parent_id)
        return path[::-1]

    def _family(self, message: Message) -> list[MessageRow]:
        """The rows sharing `message`'s parent, oldest first."""
        return [
            r
            for r in _by_seq(self._rows().values())
            if (r.message.conversation_id, r.message.parent_id) == (message.conversation_id, message.parent_id)
        ]

    def _placed(self, row: MessageRow) -> Message:
        family = [r.message.id for r in self._family(row.message)]
        index = family.index(row.message.id)
        before = family[index - 1] if index else ""
        after = family[index + 1] if index + 1 < len(family) else ""
        return dataclasses.replace(row.message, siblings=Siblings(len(family), index, before, after))

    def _below(self, conversation_id: str, message_id: str) -> list[MessageRow]:
        """`message_id` and every message under it."""
        rows = self._rows()
        found = (
            [rows[message_id]]
            if message_id in rows and rows[message_id].message.conversation_id == conversation_id
            else []
        )
        for row in found:  # grows while it is walked: breadth first
            found += [r for r in _by_seq(rows.values()) if r.message.parent_id == row.message.id]
        return found

    async def branch(self, conversation_id: str, leaf_id: str, *, limit: int) -> Sequence[Message]:
        links = self._tx.state.links
        return [
            dataclasses.replace(r.message, attachment_ids=links.get(r.message.id, ()))
            for r in self._path(conversation_id, leaf_id)[-limit:]
        ]

    async def list_branch(
        self, conversation_id: str, leaf_id: str, *, limit: int, after: str | None
    ) -> RowsPage[Message]:
        position = cursors.seq(after) if after is not None else 0  # read strictly, as SQL does, whatever the leaf
        rows = [r for r in self._path(conversation_id, leaf_id) if r.seq > position]
        page = _page(rows, limit, lambda r: str(r.seq))
        return RowsPage([self._placed(r) for r in page.items], page.cursor)

    async def list_siblings(self, message: Message, *, limit: int, after: str | None) -> RowsPage[Message]:
        position = cursors.seq(after) if after is not None else 0
        rows = [r for r in self._family(message) if r.seq > position]
        page = _page(rows, limit, lambda r: str(r.seq))
        return RowsPage([self._placed(r) for r in page.items], page.cursor)

    async def newest_leaf(self, conversation_id: str, under: str | None) -> str | None:
        if under is None:
            rows = [r for r in self._rows().values() if r.message.conversation_id == conversation_id]
        else:
            rows = self._below(conversation_id, under)
        return max(rows, key=lambda r: r.seq).message.id if rows else None

    async def streaming_under(self, conversation_id: str, message_id: str) -> Sequence[str]:
        below = self._below(conversation_id, message_id)
        return [r.message.id for r in below if r.message.status is MessageStatus.STREAMING]

    async def delete_subtree(self, conversation_id: str, message_id: str) -> int:
        below = self._below(conversation_id, message_id)
        for row in below:
            del self._rows()[row.message.id]
        return len(below)

    async def search(
        self,
        user_id: str,
        terms: tuple[str, ...],
        *,
        limit: int,
        after: str | None,
        scope: ConversationScope = ConversationScope.OWNED,
    ) -> RowsPage[SearchHit]:
        """Whole words, any case, scored by how often they occur: the databases' scoping, order and paging without
        their stemming and ranking. The excerpt is the whole message with `**` around the words found."""
        state = self._tx.state
        hits = []
        for row in _by_seq(self._rows().values()):
            m = row.message
            words = [w.lower() for w in _WORD.findall(m.content)]
            visible = state.visible(user_id, scope, m.conversation_id)
            if visible and m.status.is_final and all(t in words for t in terms):
                score = float(sum(words.count(t) for t in terms))
                conversation = state.conversations[m.conversation_id]
                current = row in self._path(conversation.id, conversation.current_message_id)
                hit = SearchHit(m, conversation.title, _marked(m.content, terms), score, current)
                hits.append((score, row.seq, hit))
        hits.sort(key=lambda hit: (-hit[0], -hit[1]))
        if after is not None:
            score, seq = cursors.read_relevance(after)
            hits = [h for h in hits if (-h[0], -h[1]) > (-score, -seq)]
        page = _page(hits, limit, lambda hit: cursors.relevance(hit[0], hit[1]))
        return RowsPage([hit[2] for hit in page.items], page.cursor)

    async def recent(self, conversation_id: str, *, limit: int) -> Sequence[Message]:
        rows = [r for r in _by_seq(self._rows().values()) if r.message.conversation_id == conversation_id]
        return [r.message for r in rows[max(len(rows) - limit, 0) :]]

    async def find_by_request(self, owner: str, request_id: str) -> Sequence[Message]:
        return [
            r.message
            for r in _by_seq(self._rows().values())
            if request_id and r.message.owner == owner and r.message.request_id == request_id
        ]

    def _held(self, message_id: str, lease: Lease) -> MessageRow | None:
        """The row, if it is STREAMING under exactly `lease` (owner and epoch): the fence of every write."""
        row = self._rows().get(message_id)
        if row is None or row.message.status is not MessageStatus.STREAMING:
            return None
        return row if (row.lease_owner, row.lease_epoch) == (lease.owner, lease.epoch) else None

    async def flush(self, batch: Sequence[Flush]) -> None:
        for item in batch:
            row = self._held(item.message_id, item.lease)
            if row is None:
                continue
            row = self._set(row, content=item.content, update_time=item.update_time)
            self._rows()[row.message.id] = dataclasses.replace(row, lease_expires_at=item.renewed_until)

    async def leased(self, lease_owner: str) -> dict[str, Held]:
        return {
            r.message.id: Held(r.lease_epoch, r.cancel_requested)
            for r in _by_seq(self._rows().values())
            if r.message.status is MessageStatus.STREAMING and r.lease_owner == lease_owner
        }

    async def finish(self, message: Message, lease: Lease) -> bool:
        row = self._held(message.id, lease)
        if row is None:
            return False
        row = self._set(
            row,
            content=message.content,
            status=message.status,
            usage=message.usage,
            finish_reason=message.finish_reason,
            error_message=message.error_message,
            error_reason=message.error_reason,
            update_time=message.update_time,
        )
        self._rows()[message.id] = dataclasses.replace(row, lease_owner=None, lease_expires_at=None)
        self._tx.state.endings.append((message.id, message.status))
        return True

    async def expired(self, now: datetime, *, owner: str | None = None, limit: int = 100) -> Sequence[Message]:
        return [
            r.message
            for r in _by_seq(self._rows().values())
            if r.message.status is MessageStatus.STREAMING
            and (
                (r.lease_expires_at is not None and r.lease_expires_at < now)
                or (owner is not None and r.lease_owner == owner)
            )
        ][:limit]

    async def take_over(self, message: Message, lease: Lease, *, now: datetime, mine: bool = False) -> Lease | None:
        row = self._rows().get(message.id)
        if row is None or row.message.status is not MessageStatus.STREAMING:
            return None
        expired = row.lease_expires_at is not None and row.lease_expires_at < now
        if not (expired or (mine and row.lease_owner == lease.owner)):
            return None
        epoch = row.lease_epoch + 1
        continued = (*row.message.continued_at, (epoch, len(row.message.content)))
        row = self._set(row, continued_at=continued)
        self._rows()[message.id] = dataclasses.replace(
            row, lease_owner=lease.owner, lease_epoch=epoch, lease_expires_at=lease.expires_at
        )
        return Lease(lease.owner, epoch, lease.expires_at)

    async def request_cancel(self, message_id: str) -> None:
        row = self._rows().get(message_id)
        if row is not None and row.message.status is MessageStatus.STREAMING:
            self._rows()[message_id] = dataclasses.replace(row, cancel_requested=True)

    async def request_cancel_all(self, conversation_id: str) -> None:
        for row in list(self._rows().values()):
            if row.message.conversation_id == conversation_id:
                await self.request_cancel(row.message.id)

    async def mark_abandoned(
        self,
        *,
        now: datetime,
        status: str,
        error_message: str,
        message_id: str | None = None,
        lease_owner: str | None = None,
    ) -> Sequence[str]:
        changed = []
        for row in _by_seq(self._rows().values()):
            if row.message.status is not MessageStatus.STREAMING:
                continue
            if message_id is not None and row.message.id != message_id:
                continue
            if lease_owner is not None:
                claimed = row.lease_owner == lease_owner
            else:
                claimed = row.lease_expires_at is not None and row.lease_expires_at < now
            if not (claimed or row.lease_expires_at is None):
                continue
            row = self._set(row, status=MessageStatus(status), error_message=error_message, update_time=now)
            self._rows()[row.message.id] = dataclasses.replace(
                row, lease_owner=None, lease_expires_at=None, lease_epoch=row.lease_epoch + 1
            )
            self._tx.state.endings.append((row.message.id, MessageStatus(status)))
            changed.append(row.message.id)
        return changed


_WORD = re.compile(r"\w+")


def _marked(content: str, terms: tuple[str, ...]) -> str:
    return _WORD.sub(lambda word: f"**{word[0]}**" if word[0].lower() in terms else word[0], content)


def _same_request(stored: Message, new: Message) -> bool:
    # SQL stores an empty request_id as NULL, and NULLs never collide in a unique constraint.
    return bool(new.request_id) and (stored.owner, stored.request_id, stored.role) == (
        new.owner,
        new.request_id,
        new.role,
    )


class FakeApiKeys:
    def __init__(self, tx: _Transaction) -> None:
        self._tx = tx

    async def add(self, key: ApiKey) -> None:
        keys = self._tx.state.api_keys
        if key.id in keys:
            raise ValueError(f"duplicate API key id {key.id}")
        # Like the SQL insert: a new key has never been used nor revoked.
        keys[key.id] = dataclasses.replace(key, last_used_time=None, revoke_time=None)

    async def get(self, key_id: str) -> ApiKey | None:
        return self._tx.state.api_keys.get(key_id)

    async def list(self, *, user_id: str | None, limit: int, after: str | None) -> RowsPage[ApiKey]:
        keys = sorted(self._tx.state.api_keys.values(), key=lambda k: k.id)
        last = None if after is None else cursors.key_id(after)
        keys = [k for k in keys if (user_id is None or k.user_id == user_id) and (last is None or k.id > last)]
        return _page(keys, limit, lambda k: k.id)

    async def revoke(self, key_id: str, when: datetime) -> bool:
        keys = self._tx.state.api_keys
        key = keys.get(key_id)
        if key is None or key.revoke_time is not None:
            return False
        keys[key_id] = dataclasses.replace(key, revoke_time=when)
        return True

    async def touch(self, key_id: str, when: datetime) -> None:
        keys = self._tx.state.api_keys
        if key_id in keys:
            keys[key_id] = dataclasses.replace(keys[key_id], last_used_time=when)


class FakeCoachingSessions:
    def __init__(self, tx: _Transaction) -> None:
        self._tx = tx

    async def add(self, session: CoachingSession) -> None:
        sessions = self._tx.state.coaching_sessions
        if session.id in sessions:
            raise ValueError(f"duplicate coaching session id {session.id}")
        sessions[session.id] = session

    async def get(self, session_id: str, *, for_update: bool = False) -> CoachingSession | None:
        return self._tx.state.coaching_sessions.get(session_id)

    async def update(self, session: CoachingSession) -> None:
        sessions = self._tx.state.coaching_sessions
        if session.id in sessions:
            sessions[session.id] = session


class FakeAttachments:
    def __init__(self, tx: _Transaction) -> None:
        self._tx = tx

    async def add(self, attachment: Attachment) -> None:
        attachments = self._tx.state.attachments
        if attachment.id in attachments:
            raise ValueError(f"duplicate attachment id {attachment.id}")
        attachments[attachment.id] = attachment

    async def get(self, attachment_id: str) -> Attachment | None:
        return self._tx.state.attachments.get(attachment_id)

    async def get_many(self, attachment_ids: Sequence[str]) -> Mapping[str, Attachment]:
        stored = self._tx.state.attachments
        return {i: stored[i] for i in attachment_ids if i in stored}

    async def delete(self, attachment_id: str) -> None:
        state = self._tx.state
        state.attachments.pop(attachment_id, None)
        state.links = {k: tuple(i for i in ids if i != attachment_id) for k, ids in state.links.items()}

    async def link(self, message_id: str, attachment_ids: Sequence[str]) -> None:
        state = self._tx.state
        if message_id not in state.messages or any(i not in state.attachments for i in attachment_ids):
            raise LookupError("foreign key: no such message or attachment")
        if attachment_ids:
            state.links[message_id] = tuple(attachment_ids)

    async def linked(self, message_ids: Sequence[str]) -> Mapping[str, tuple[Attachment, ...]]:
        state = self._tx.state
        found = {m: tuple(state.attachments[i] for i in state.links.get(m, ())) for m in message_ids}
        return {m: files for m, files in found.items() if files}

    async def shared_with(self, attachment_id: str, user_id: str) -> bool:
        state = self._tx.state
        return any(
            attachment_id in ids and (state.messages[m].message.conversation_id, user_id) in state.shares
            for m, ids in state.links.items()
        )


class FakeShares:
    def __init__(self, tx: _Transaction) -> None:
        self._tx = tx

    async def add(self, share: Share) -> Share:
        shares = self._tx.state.shares
        if share.conversation_id not in self._tx.state.conversations:
            raise LookupError(f"foreign key: no conversation {share.conversation_id}")
        return shares.setdefault((share.conversation_id, share.user_id), share)

    async def get(self, conversation_id: str, user_id: str) -> Share | None:
        return self._tx.state.shares.get((conversation_id, user_id))

    async def remove(self, conversation_id: str, user_id: str) -> bool:
        return self._tx.state.shares.pop((conversation_id, user_id), None) is not None

    async def list_by_conversation(self, conversation_id: str, *, limit: int, after: str | None) -> RowsPage[Share]:
        shares = sorted(
            (s for s in self._tx.state.shares.values() if s.conversation_id == conversation_id), key=lambda s: s.user_id
        )
        return _page([s for s in shares if after is None or s.user_id > after], limit, lambda s: s.user_id)

    async def conversations(
        self, user_id: str, scope: ConversationScope, *, limit: int, after: str | None
    ) -> RowsPage[Conversation]:
        state = self._tx.state
        items = [c for c in state.conversations.values() if state.visible(user_id, scope, c.id)]
        items.sort(key=lambda c: (c.update_time, c.id), reverse=True)
        if after is not None:
            when, _, last_id = after.partition("|")
            key = (datetime.fromisoformat(when), last_id)
            items = [c for c in items if (c.update_time, c.id) < key]
        return _page(items, limit, lambda c: f"{c.update_time.isoformat()}|{c.id}")


class FakeAttachmentStore:
    """Implements `ports.AttachmentStore` in memory. `fail_puts` makes `put` raise `Unavailable` after storing
    part of the bytes (as a store that fails midway would, had it no transaction); `deleted` records deletions."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.fail_puts = False
        self.deleted: list[str] = []

    async def put(self, key: str, chunks: AsyncIterable[bytes]) -> None:
        received = b""
        async for chunk in chunks:
            received += chunk
            self.blobs[key] = received
            if self.fail_puts:
                raise Unavailable("the attachment store is unavailable")

    async def get(self, key: str) -> AsyncIterator[bytes]:
        data = self.blobs.get(key, b"")
        for start in range(0, len(data), 4):  # small chunks: readers must join them
            yield data[start : start + 4]

    async def delete(self, key: str) -> None:
        self.deleted.append(key)
        self.blobs.pop(key, None)


# ---------------------------------------------------------------------------------------------- clock


class FakeClock:
    """A `ports.Clock` that only moves when told to."""

    def __init__(self, start: datetime = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


# ---------------------------------------------------------------------------------------------- provider


class ScriptedProvider:
    """Implements `ports.Provider` with behaviour a test scripts.

    - `pieces`: the text pieces of every reply; `delay`: seconds before each piece.
    - `unavailable_times`: the first N calls raise `ModelUnavailable` before any piece.
    - `fail_after`: raise `failure` (default `ModelFailed`) after that many pieces.
    - `pause_after`: after that many pieces set `held` and wait until the test sets `release`.
    - `on_stream(prompt)`: called when a call starts (to look at the world as the model is called).
    - `list_models_error`: raised by `list_models` (an unreachable provider).
    Every prompt received is recorded in `prompts`.
    """

    name = "scripted"
    continues = True
    takes_images = True

    def __init__(
        self,
        pieces: Sequence[str] = ("Hello", ", ", "wörld 🙂"),
        *,
        models: Sequence[str] = ("scripted",),
        delay: float = 0.0,
        unavailable_times: int = 0,
        fail_after: int | None = None,
        failure: Exception | None = None,
        pause_after: int | None = None,
        completion: Completion | None = None,
        on_stream: Callable[[Prompt], None] | None = None,
        list_models_error: Exception | None = None,
    ) -> None:
        self.pieces = list(pieces)
        self.models = list(models)
        self.delay = delay
        self.unavailable_times = unavailable_times
        self.fail_after = fail_after
        self.failure = failure or ModelFailed("the scripted model failed mid-reply")
        self.pause_after = pause_after
        self.completion = completion or Completion(FinishReason.STOP, Usage(completion_tokens=len(self.pieces)))
        self.on_stream = on_stream
        self.list_models_error = list_models_error
        self.prompts: list[Prompt] = []
        self.held = asyncio.Event()
        self.release = asyncio.Event()
        self.closed = False

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def calls(self) -> int:
        return len(self.prompts)

    async def stream(self, prompt: Prompt) -> AsyncIterator[str | Completion]:
        self.prompts.append(prompt)
        if self.on_stream is not None:
            self.on_stream(prompt)
        if prompt.model not in self.models:
            raise ModelNotFound(prompt.model)
        if self.calls <= self.unavailable_times:
            raise ModelUnavailable("the scripted model is unreachable")
        skip = len(prompt.prefix)  # continuing a partial reply: the script from where the prefix ends
        for index in range(len(self.pieces) + 1):
            if index == self.pause_after and not prompt.prefix:
                self.held.set()
                await self.release.wait()
            if index == self.fail_after:
                raise self.failure
            if index == len(self.pieces):
                break
            if self.delay:
                await asyncio.sleep(self.delay)
            piece = self.pieces[index]
            if skip >= len(piece):
                skip -= len(piece)
                continue
            yield piece[skip:]
            skip = 0
        yield self.completion

    async def list_models(self) -> Sequence[ModelInfo]:
        if self.list_models_error is not None:
            raise self.list_models_error
        return [ModelInfo(name=name, provider=self.name) for name in self.models]

    async def aclose(self) -> None:
        self.closed = True


if TYPE_CHECKING:  # mypy proves the fakes implement the ports
    _storage: UnitOfWorkFactory = FakeStorage().unit_of_work
    _store: AttachmentStore = FakeAttachmentStore()
    _provider: Provider = ScriptedProvider()
    _clock: Clock = FakeClock()
