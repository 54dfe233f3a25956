"""Repositories over one SQLAlchemy connection: Core statements in, frozen domain dataclasses out."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from service.domain import (
    ApiKey,
    Conversation,
    ConversationScope,
    DuplicateRequest,
    FinishReason,
    Lease,
    Message,
    MessageStatus,
    Role,
    SearchHit,
    Usage,
)
from service.ports import Flush, Held, RowsPage
from service.storage import branches, cursors
from service.storage.integrity import is_foreign_key_violation
from service.storage.search import search_postgres, search_sqlite
from service.storage.tables import api_keys, conversation_shares, conversations, message_attachments, messages

STREAMING = MessageStatus.STREAMING.value
T = TypeVar("T")

# The statements of a reply's start and end (the first-token path), built once with bind parameters: SQLAlchemy
# then reuses their cache key and compiled SQL instead of building and hashing a new statement per reply (the
# branch's recursive CTE was the largest piece of a reply start's CPU in a py-spy profile).
_TOUCH_AND_LOCK = (
    conversations.update()
    .where(conversations.c.id == sa.bindparam("b_id"))
    .values(update_time=sa.bindparam("b_time"))
    .returning(*conversations.c)
)
_SET_CURRENT = (
    conversations.update()
    .where(conversations.c.id == sa.bindparam("b_id"))
    .values(current_message_id=sa.bindparam("b_current"), update_time=sa.bindparam("b_time"))
)
# Postgres: lock the conversation, touch it and make the reply about to be inserted its current leaf, in one
# statement that also returns the leaf it had (RETURNING sees only the new row; the locked subquery keeps the old).
_PREVIOUS = (
    sa.select(conversations.c.id, conversations.c.current_message_id.label("previous_leaf"))
    .where(conversations.c.id == sa.bindparam("b_id"))
    .with_for_update()
    .subquery("before")
)
_START_REPLY = (
    conversations.update()
    .where(conversations.c.id == _PREVIOUS.c.id)
    .values(current_message_id=sa.bindparam("b_current"), update_time=sa.bindparam("b_time"))
    .returning(*conversations.c, _PREVIOUS.c.previous_leaf)
)
_BRANCH_PATH = branches.path_to(sa.bindparam("b_conversation"), sa.bindparam("b_leaf"), depth=sa.bindparam("b_depth"))
# Each message's files as "position:attachment_id,...": the prompt reads the files only of messages that have some.
_FILE_LIST = (
    sa.select(
        sa.func.aggregate_strings(
            sa.cast(message_attachments.c.position, sa.String) + ":" + message_attachments.c.attachment_id, ","
        )
    )
    .where(message_attachments.c.message_id == messages.c.id)
    .scalar_subquery()
    .label("file_list")
)
_BRANCH = (
    sa.select(messages, _FILE_LIST).join(_BRANCH_PATH, messages.c.seq == _BRANCH_PATH.c.seq).order_by(messages.c.seq)
)
_FINISH = (
    messages.update()
    .where(
        messages.c.id == sa.bindparam("b_id"),
        messages.c.status == STREAMING,
        messages.c.lease_owner == sa.bindparam("b_owner"),
        messages.c.lease_epoch == sa.bindparam("b_epoch"),
    )
    .values(
        content=sa.bindparam("b_content"),
        status=sa.bindparam("b_status"),
        prompt_tokens=sa.bindparam("b_prompt_tokens"),
        completion_tokens=sa.bindparam("b_completion_tokens"),
        usage_estimated=sa.bindparam("b_usage_estimated"),
        finish_reason=sa.bindparam("b_finish_reason"),
        error_message=sa.bindparam("b_error_message"),
        error_reason=sa.bindparam("b_error_reason"),
        update_time=sa.bindparam("b_time"),
        lease_owner=None,
        lease_expires_at=None,
    )
)


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything stored is UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _page(items: list[T], limit: int, cursor_of: Any) -> RowsPage[T]:
    if len(items) > limit:
        items = items[:limit]
        return RowsPage(items, cursor_of(items[-1]))
    return RowsPage(items, None)


class SqlConversations:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def add(self, conversation: Conversation) -> None:
        await self._conn.execute(conversations.insert().values(**_conversation_row(conversation)))

    async def get(self, conversation_id: str, *, for_update: bool = False) -> Conversation | None:
        query = conversations.select().where(conversations.c.id == conversation_id)
        if for_update:
            query = query.with_for_update()
        row = (await self._conn.execute(query)).first()
        return _conversation(row) if row else None

    async def list_by_owner(self, owner: str, *, limit: int, after: str | None) -> RowsPage[Conversation]:
        c = conversations.c
        query = conversations.select().where(c.owner == owner)
        if after is not None:
            query = query.where(sa.tuple_(c.update_time, c.id) < sa.tuple_(*cursors.read_activity(after)))
        query = query.order_by(c.update_time.desc(), c.id.desc()).limit(limit + 1)
        rows = [_conversation(r) for r in await self._conn.execute(query)]
        return _page(rows, limit, lambda conv: cursors.activity(conv.update_time, conv.id))

    async def update(self, conversation: Conversation) -> None:
        row = _conversation_row(conversation)
        del row["id"], row["owner"], row["create_time"], row["current_message_id"]
        await self._conn.execute(conversations.update().where(conversations.c.id == conversation.id).values(**row))

    async def touch(self, conversation_id: str, when: datetime) -> None:
        await self._conn.execute(
            conversations.update().where(conversations.c.id == conversation_id).values(update_time=when)
        )

    async def set_current(self, conversation_id: str, message_id: str, when: datetime) -> None:
        params = {"b_id": conversation_id, "b_current": message_id or None, "b_time": when}
        await self._conn.execute(_SET_CURRENT, params)

    async def touch_and_lock(self, conversation_id: str, when: datetime) -> Conversation | None:
        row = (await self._conn.execute(_TOUCH_AND_LOCK, {"b_id": conversation_id, "b_time": when})).first()
        return _conversation(row) if row else None

    async def start_reply(self, conversation_id: str, reply_id: str, when: datetime) -> Conversation | None:
        if self._conn.dialect.name == "postgresql":
            params = {"b_id": conversation_id, "b_current": reply_id, "b_time": when}
            row = (await self._conn.execute(_START_REPLY, params)).first()
            if row is None:
                return None
            return dataclasses.replace(_conversation(row), current_message_id=row.previous_leaf or "")
        # SQLite's RETURNING cannot show the leaf it replaces: two statements (its first write locks the database).
        before = await self.touch_and_lock(conversation_id, when)
        if before is not None:
            await self.set_current(conversation_id, reply_id, when)
        return before

    async def delete(self, conversation_id: str) -> None:
        # The conversation's row is locked first, as every writer of its messages does (a reply starting locks it,
        # then may end the leaf): taking the messages first would deadlock with such a writer.
        await self.get(conversation_id, for_update=True)
        # Explicit, so it holds whether or not the database enforces the foreign key's cascade.
        in_conversation = sa.select(messages.c.id).where(messages.c.conversation_id == conversation_id)
        await self._conn.execute(
            message_attachments.delete().where(message_attachments.c.message_id.in_(in_conversation))
        )
        await self._conn.execute(
            conversation_shares.delete().where(conversation_shares.c.conversation_id == conversation_id)
        )
        await self._conn.execute(messages.delete().where(messages.c.conversation_id == conversation_id))
        await self._conn.execute(conversations.delete().where(conversations.c.id == conversation_id))


class SqlMessages:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def add(self, *added: Message, lease: Lease | None = None) -> None:
        rows = [_message_row(message) for message in added]
        for row, message in zip(rows, added, strict=True):
            held = lease if message.status is MessageStatus.STREAMING else None
            row.update(
                lease_owner=held.owner if held else None,
                lease_epoch=held.epoch if held else 0,
                lease_expires_at=held.expires_at if held else None,
            )
        try:
            # One statement (a multi-row INSERT), one round trip, however many messages.
            await self._conn.execute(messages.insert(), rows)
        except IntegrityError as exc:
            if is_foreign_key_violation(exc):
                raise  # not a duplicate: the conversation is gone (the unit of work makes it NOT_FOUND)
            # The transaction is spoilt (Postgres): the caller retries its read in a new unit of work.
            raise DuplicateRequest(added[0].request_id) from exc

    async def get(self, message_id: str) -> Message | None:
        row = (await self._conn.execute(messages.select().where(messages.c.id == message_id))).first()
        return _message(row) if row else None

    async def branch(self, conversation_id: str, leaf_id: str, *, limit: int) -> Sequence[Message]:
        params = {"b_conversation": conversation_id, "b_leaf": leaf_id, "b_depth": limit}
        return [_carrying(_message(row), row.file_list) for row in await self._conn.execute(_BRANCH, params)]

    async def list_branch(
        self, conversation_id: str, leaf_id: str, *, limit: int, after: str | None
    ) -> RowsPage[Message]:
        path = branches.path_to(conversation_id, leaf_id, after=cursors.seq(after) if after is not None else None)
        query = sa.select(messages).join(path, messages.c.seq == path.c.seq).order_by(messages.c.seq)
        rows = list(await self._conn.execute(query.limit(limit + 1)))
        page = _page(rows, limit, lambda row: str(row.seq))
        return RowsPage(await self._placed(conversation_id, page.items), page.cursor)

    async def list_siblings(self, message: Message, *, limit: int, after: str | None) -> RowsPage[Message]:
        c = messages.c
        query = messages.select().where(c.conversation_id == message.conversation_id, c.parent_id == message.parent_id)
        if after is not None:
            query = query.where(c.seq > cursors.seq(after))
        rows = list(await self._conn.execute(query.order_by(c.seq).limit(limit + 1)))
        page = _page(rows, limit, lambda row: str(row.seq))
        return RowsPage(await self._placed(message.conversation_id, page.items), page.cursor)

    async def _placed(self, conversation_id: str, rows: Sequence[Any]) -> list[Message]:
        """The rows as messages, each with its place among its siblings (one statement for the page)."""
        if not rows:
            return []
        parents = {row.parent_id or "" for row in rows}
        found = await self._conn.execute(branches.positions(conversation_id, parents))
        places = {row.id: branches.siblings_of(row) for row in found}
        return [dataclasses.replace(_message(row), siblings=places.get(row.id)) for row in rows]

    async def newest_leaf(self, conversation_id: str, under: str | None) -> str | None:
        c = messages.c
        if under is None:
            query = sa.select(c.id).where(c.conversation_id == conversation_id).order_by(c.seq.desc()).limit(1)
        else:
            tree = branches.below(conversation_id, under)
            query = sa.select(tree.c.id).order_by(tree.c.seq.desc()).limit(1)
        return (await self._conn.execute(query)).scalar()

    async def streaming_under(self, conversation_id: str, message_id: str) -> Sequence[str]:
        tree = branches.below(conversation_id, message_id)
        query = sa.select(tree.c.id).where(tree.c.status == STREAMING)
        return list((await self._conn.execute(query)).scalars())

    async def delete_subtree(self, conversation_id: str, message_id: str) -> int:
        tree = branches.below(conversation_id, message_id)
        deleted = messages.delete().where(messages.c.seq.in_(sa.select(tree.c.seq))).returning(messages.c.seq)
        return len((await self._conn.execute(deleted)).all())  # rowcount: -1 on SQLite for a statement with WITH

    async def search(
        self,
        user_id: str,
        terms: tuple[str, ...],
        *,
        limit: int,
        after: str | None,
        scope: ConversationScope = ConversationScope.OWNED,
    ) -> RowsPage[SearchHit]:
        run = search_sqlite if self._conn.dialect.name == "sqlite" else search_postgres
        rows = await run(self._conn, user_id, terms, limit=limit + 1, after=after, scope=scope)
        page = _page(rows, limit, lambda hit: cursors.relevance(float(hit[0].score), hit[0].seq))
        current = await self._on_current_branches([row for row, _ in page.items])
        hits = [
            SearchHit(_message(row), row.conversation_title, snippet, float(row.score), row.id in current)
            for row, snippet in page.items
        ]
        return RowsPage(hits, page.cursor)

    async def _on_current_branches(self, rows: Sequence[Any]) -> set[str]:
        """Which of the message rows are on their conversation's current branch."""
        if not rows:
            return set()
        path = branches.current_branches({row.conversation_id for row in rows})
        query = sa.select(path.c.id).where(path.c.id.in_([row.id for row in rows]))
        return set((await self._conn.execute(query)).scalars())

    async def recent(self, conversation_id: str, *, limit: int) -> Sequence[Message]:
        c = messages.c
        query = messages.select().where(c.conversation_id == conversation_id).order_by(c.seq.desc()).limit(limit)
        rows = [_message(r) for r in await self._conn.execute(query)]
        rows.reverse()
        return rows

    async def find_by_request(self, owner: str, request_id: str) -> Sequence[Message]:
        c = messages.c
        query = messages.select().where(c.owner == owner, c.request_id == request_id).order_by(c.seq)
        return [_message(r) for r in await self._conn.execute(query)]

    async def flush(self, batch: Sequence[Flush]) -> None:
        if not batch:
            return  # an executemany of no rows is deprecated in SQLAlchemy (a future error), and writes nothing
        c = messages.c
        statement = (
            messages.update()
            .where(
                c.id == sa.bindparam("b_id"),
                c.status == STREAMING,
                c.lease_owner == sa.bindparam("b_owner"),
                c.lease_epoch == sa.bindparam("b_epoch"),
            )
            .values(
                content=sa.bindparam("b_content"),
                lease_expires_at=sa.bindparam("b_expires"),
                update_time=sa.bindparam("b_time"),
            )
        )
        params = [
            {
                "b_id": f.message_id,
                "b_owner": f.lease.owner,
                "b_epoch": f.lease.epoch,
                "b_content": f.content,
                "b_expires": f.renewed_until,
                "b_time": f.update_time,
            }
            for f in batch
        ]
        # One executemany: a single round trip for every reply in flight.
        await self._conn.execute(statement, params)

    async def leased(self, lease_owner: str) -> dict[str, Held]:
        c = messages.c
        query = sa.select(c.id, c.lease_epoch, c.cancel_requested).where(
            c.status == STREAMING, c.lease_owner == lease_owner
        )
        return {row.id: Held(row.lease_epoch, bool(row.cancel_requested)) for row in await self._conn.execute(query)}

    async def finish(self, message: Message, lease: Lease) -> bool:
        params = {
            "b_id": message.id,
            "b_owner": lease.owner,
            "b_epoch": lease.epoch,
            "b_content": message.content,
            "b_status": message.status.value,
            "b_prompt_tokens": message.usage.prompt_tokens,
            "b_completion_tokens": message.usage.completion_tokens,
            "b_usage_estimated": message.usage.estimated,
            "b_finish_reason": message.finish_reason.value,
            "b_error_message": message.error_message,
            "b_error_reason": message.error_reason,
            "b_time": message.update_time,
        }
        return bool((await self._conn.execute(_FINISH, params)).rowcount)

    async def request_cancel(self, message_id: str) -> None:
        c = messages.c
        await self._conn.execute(
            messages.update().where(c.id == message_id, c.status == STREAMING).values(cancel_requested=True)
        )

    async def request_cancel_all(self, conversation_id: str) -> None:
        c = messages.c
        await self._conn.execute(
            messages.update()
            .where(c.conversation_id == conversation_id, c.status == STREAMING)
            .values(cancel_requested=True)
        )

    async def expired(self, now: datetime, *, owner: str | None = None, limit: int = 100) -> Sequence[Message]:
        c = messages.c
        stale = c.lease_expires_at < now if owner is None else sa.or_(c.lease_owner == owner, c.lease_expires_at < now)
        query = messages.select().where(c.status == STREAMING, stale).order_by(c.seq).limit(limit)
        return [_message(row) for row in await self._conn.execute(query)]

    async def take_over(self, message: Message, lease: Lease, *, now: datetime, mine: bool = False) -> Lease | None:
        c = messages.c
        epoch = (await self._conn.execute(sa.select(c.lease_epoch).where(c.id == message.id))).scalar()
        if epoch is None:
            return None
        recorded = _continued(message.continued_at)
        statement = (
            messages.update()
            .where(
                c.id == message.id,
                c.status == STREAMING,
                c.lease_epoch == epoch,
                sa.or_(c.lease_expires_at < now, c.lease_owner == lease.owner) if mine else c.lease_expires_at < now,
            )
            .values(
                lease_owner=lease.owner,
                lease_epoch=c.lease_epoch + 1,
                lease_expires_at=lease.expires_at,
                # The offset is the stored text's length when the claim is made, in the same statement.
                continued_at=sa.literal(recorded + ("," if recorded else ""))
                + sa.cast(c.lease_epoch + 1, sa.Text)
                + ":"
                + sa.cast(sa.func.length(c.content), sa.Text),
            )
            .returning(c.lease_epoch)
        )
        won = (await self._conn.execute(statement)).scalar()
        return Lease(lease.owner, int(won), lease.expires_at) if won is not None else None

    async def mark_abandoned(
        self,
        *,
        now: datetime,
        status: str,
        error_message: str,
        message_id: str | None = None,
        lease_owner: str | None = None,
    ) -> Sequence[str]:
        c = messages.c
        claim = c.lease_owner == lease_owner if lease_owner is not None else c.lease_expires_at < now
        condition = sa.and_(c.status == STREAMING, sa.or_(claim, c.lease_expires_at.is_(None)))
        if message_id is not None:
            condition = sa.and_(condition, c.id == message_id)
        # The status guard makes the UPDATE the arbiter: of racing replicas exactly one changes each row.
        statement = (
            messages.update()
            .where(condition)
            .values(
                status=status,
                error_message=error_message,
                update_time=now,
                lease_owner=None,
                lease_expires_at=None,
                lease_epoch=c.lease_epoch + 1,
            )
            .returning(c.id)
        )
        return [row.id for row in await self._conn.execute(statement)]


class SqlApiKeys:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def add(self, key: ApiKey) -> None:
        await self._conn.execute(
            api_keys.insert().values(
                id=key.id,
                user_id=key.user_id,
                secret_hash=key.secret_hash,
                scopes=" ".join(sorted(key.scopes)),
                name=key.name,
                create_time=key.create_time,
            )
        )

    async def get(self, key_id: str) -> ApiKey | None:
        row = (await self._conn.execute(api_keys.select().where(api_keys.c.id == key_id))).first()
        return _api_key(row) if row else None

    async def list(self, *, user_id: str | None, limit: int, after: str | None) -> RowsPage[ApiKey]:
        c = api_keys.c
        query = api_keys.select()
        if user_id is not None:
            query = query.where(c.user_id == user_id)
        if after is not None:
            query = query.where(c.id > cursors.key_id(after))
        rows = [_api_key(r) for r in await self._conn.execute(query.order_by(c.id).limit(limit + 1))]
        return _page(rows, limit, lambda key: key.id)

    async def revoke(self, key_id: str, when: datetime) -> bool:
        c = api_keys.c
        result = await self._conn.execute(
            api_keys.update().where(c.id == key_id, c.revoke_time.is_(None)).values(revoke_time=when)
        )
        return bool(result.rowcount)

    async def touch(self, key_id: str, when: datetime) -> None:
        await self._conn.execute(api_keys.update().where(api_keys.c.id == key_id).values(last_used_time=when))


# ------------------------------------------------------------------------------------------ row mapping


def _conversation_row(c: Conversation) -> dict[str, Any]:
    return {
        "current_message_id": c.current_message_id or None,
        "id": c.id,
        "owner": c.owner,
        "title": c.title,
        "model": c.model,
        "persona": c.persona,
        "system_prompt": c.system_prompt,
        "create_time": c.create_time,
        "update_time": c.update_time,
    }


def _conversation(row: Any) -> Conversation:
    return Conversation(
        id=row.id,
        owner=row.owner,
        title=row.title,
        model=row.model,
        persona=row.persona,
        system_prompt=row.system_prompt,
        create_time=_utc(row.create_time),
        update_time=_utc(row.update_time),
        current_message_id=row.current_message_id or "",
    )


def _message_row(m: Message) -> dict[str, Any]:
    return {
        "id": m.id,
        "conversation_id": m.conversation_id,
        "owner": m.owner,
        "role": m.role.value,
        "content": m.content,
        "status": m.status.value,
        "model": m.model,
        "request_id": m.request_id or None,
        "prompt_tokens": m.usage.prompt_tokens,
        "completion_tokens": m.usage.completion_tokens,
        "usage_estimated": m.usage.estimated,
        "finish_reason": m.finish_reason.value,
        "error_message": m.error_message,
        "error_reason": m.error_reason,
        "continued_at": _continued(m.continued_at),
        "parent_id": m.parent_id,
        "create_time": m.create_time,
        "update_time": m.update_time,
    }


def _message(row: Any) -> Message:
    return Message(
        id=row.id,
        conversation_id=row.conversation_id,
        owner=row.owner,
        role=Role(row.role),
        content=row.content,
        status=MessageStatus(row.status),
        create_time=_utc(row.create_time),
        update_time=_utc(row.update_time),
        model=row.model,
        request_id=row.request_id or "",
        usage=Usage(row.prompt_tokens, row.completion_tokens, estimated=bool(row.usage_estimated)),
        finish_reason=FinishReason(row.finish_reason),
        error_message=row.error_message,
        error_reason=row.error_reason,
        continued_at=_continuations(row.continued_at),
        parent_id=row.parent_id or "",
    )


def _carrying(message: Message, file_list: str | None) -> Message:
    """`message` with the attachment ids of its `file_list` ("position:id,..." in any order)."""
    if not file_list:
        return message
    placed = sorted((int(position), attachment_id) for position, _, attachment_id in
                    (item.partition(":") for item in file_list.split(",")))  # fmt: skip
    return dataclasses.replace(message, attachment_ids=tuple(attachment_id for _, attachment_id in placed))


def _continued(pairs: Sequence[tuple[int, int]]) -> str:
    return ",".join(f"{generation}:{offset}" for generation, offset in pairs)


def _continuations(text: str) -> tuple[tuple[int, int], ...]:
    pairs = (item.partition(":") for item in text.split(",") if item)
    return tuple((int(generation), int(offset)) for generation, _, offset in pairs)


def _api_key(row: Any) -> ApiKey:
    return ApiKey(
        id=row.id,
        user_id=row.user_id,
        secret_hash=row.secret_hash,
        scopes=frozenset(row.scopes.split()),
        create_time=_utc(row.create_time),
        name=row.name,
        last_used_time=_utc(row.last_used_time) if row.last_used_time else None,
        revoke_time=_utc(row.revoke_time) if row.revoke_time else None,
    )
