"""The share repository: read-only grants on conversations, and the conversations a user may list."""

from __future__ import annotations

from datetime import UTC
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from service.domain import Conversation, ConversationScope, Share, ShareRole
from service.ports import RowsPage
from service.storage import cursors
from service.storage.repository import _conversation  # the one row mapping of conversations
from service.storage.tables import conversation_shares, conversations


class SqlShares:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def add(self, share: Share) -> Share:
        existing = await self.get(share.conversation_id, share.user_id)
        if existing is not None:
            return existing
        await self._conn.execute(
            conversation_shares.insert().values(
                conversation_id=share.conversation_id,
                user_id=share.user_id,
                role=share.role.value,
                create_time=share.create_time,
            )
        )
        return share

    async def get(self, conversation_id: str, user_id: str) -> Share | None:
        c = conversation_shares.c
        query = conversation_shares.select().where(c.conversation_id == conversation_id, c.user_id == user_id)
        row = (await self._conn.execute(query)).first()
        return _share(row) if row else None

    async def remove(self, conversation_id: str, user_id: str) -> bool:
        c = conversation_shares.c
        result = await self._conn.execute(
            conversation_shares.delete().where(c.conversation_id == conversation_id, c.user_id == user_id)
        )
        return bool(result.rowcount)

    async def list_by_conversation(self, conversation_id: str, *, limit: int, after: str | None) -> RowsPage[Share]:
        c = conversation_shares.c
        query = conversation_shares.select().where(c.conversation_id == conversation_id)
        if after is not None:
            query = query.where(c.user_id > after)
        rows = [_share(r) for r in await self._conn.execute(query.order_by(c.user_id).limit(limit + 1))]
        if len(rows) > limit:
            return RowsPage(rows[:limit], rows[limit - 1].user_id)
        return RowsPage(rows, None)

    async def conversations(
        self, user_id: str, scope: ConversationScope, *, limit: int, after: str | None
    ) -> RowsPage[Conversation]:
        c = conversations.c
        query = conversations.select().where(visible_to(user_id, scope, c.owner, c.id))
        if after is not None:
            query = query.where(sa.tuple_(c.update_time, c.id) < sa.tuple_(*cursors.read_activity(after)))
        query = query.order_by(c.update_time.desc(), c.id.desc()).limit(limit + 1)
        rows = [_conversation(r) for r in await self._conn.execute(query)]
        if len(rows) > limit:
            last = rows[limit - 1]
            return RowsPage(rows[:limit], cursors.activity(last.update_time, last.id))
        return RowsPage(rows, None)


def visible_to(
    user_id: str, scope: ConversationScope, owner: sa.ColumnElement[str], conversation_id: sa.ColumnElement[str]
) -> sa.ColumnElement[bool]:
    """The condition on rows (with these owner and conversation id columns) that `scope` gives `user_id`."""
    shared = conversation_id.in_(
        sa.select(conversation_shares.c.conversation_id).where(conversation_shares.c.user_id == user_id)
    )
    if scope is ConversationScope.OWNED:
        return owner == user_id
    if scope is ConversationScope.SHARED:
        return shared
    return sa.or_(owner == user_id, shared)


def _share(row: Any) -> Share:
    created = row.create_time
    return Share(
        conversation_id=row.conversation_id,
        user_id=row.user_id,
        role=ShareRole(row.role),
        create_time=created if created.tzinfo else created.replace(tzinfo=UTC),
    )
