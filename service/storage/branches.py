"""The message tree's queries, the same SQL on SQLite and Postgres (recursive CTEs, window functions).

A branch is walked up from its leaf through `parent_id` (the unique index on `id`), children down through
(`conversation_id`, `parent_id`) (ix_messages_conversation_parent). A message is always newer (higher `seq`) than
its parent: a branch in `seq` order is a branch from its first message on, the newest message under any message is
a leaf, and a walk up from a leaf can stop at a keyset position (`seq`) it has passed.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import sqlalchemy as sa

from service.domain import Siblings
from service.storage.tables import conversations, messages


def path_to(
    conversation_id: str | sa.BindParameter[Any],
    leaf_id: str | sa.BindParameter[Any],
    *,
    depth: int | sa.BindParameter[Any] | None = None,
    after: int | None = None,
) -> sa.CTE:
    """The `seq`s of the branch ending at `leaf_id`: at most `depth` messages up from it, only those after `after`."""
    m = messages.c
    start = sa.select(m.seq, m.parent_id, sa.literal(1, sa.Integer).label("depth")).where(
        m.id == leaf_id, m.conversation_id == conversation_id
    )
    if after is not None:
        start = start.where(m.seq > after)
    path = start.cte("path", recursive=True)
    parent = messages.alias("parent")
    step = sa.select(parent.c.seq, parent.c.parent_id, path.c.depth + 1).where(parent.c.id == path.c.parent_id)
    if depth is not None:
        step = step.where(path.c.depth < depth)
    if after is not None:
        step = step.where(parent.c.seq > after)
    return path.union_all(step)


def below(conversation_id: str, message_id: str) -> sa.CTE:
    """`message_id` and every message under it: their `seq`, `id` and `status`."""
    m = messages.c
    start = sa.select(m.seq, m.id, m.status).where(m.id == message_id, m.conversation_id == conversation_id)
    tree = start.cte("below", recursive=True)
    child = messages.alias("child")
    step = sa.select(child.c.seq, child.c.id, child.c.status).where(
        child.c.conversation_id == conversation_id, child.c.parent_id == tree.c.id
    )
    return tree.union_all(step)


def positions(conversation_id: str, parent_ids: Collection[str]) -> sa.Select[Any]:
    """Every child of `parent_ids` ('' for first messages) with its place among its siblings."""
    m = messages.c
    ordered: dict[str, Any] = {"partition_by": m.parent_id, "order_by": m.seq}
    return sa.select(
        m.id,
        sa.func.count().over(partition_by=m.parent_id).label("count"),
        sa.func.row_number().over(**ordered).label("number"),
        sa.func.lag(m.id).over(**ordered).label("previous_id"),
        sa.func.lead(m.id).over(**ordered).label("next_id"),
    ).where(m.conversation_id == conversation_id, m.parent_id.in_(parent_ids))


def siblings_of(row: Any) -> Siblings:
    return Siblings(row.count, row.number - 1, row.previous_id or "", row.next_id or "")


def current_branches(conversation_ids: Collection[str]) -> sa.CTE:
    """The ids of the messages on the current branches of `conversation_ids`."""
    m = messages.c
    start = (
        sa.select(m.id, m.parent_id)
        .join(conversations, conversations.c.current_message_id == m.id)
        .where(conversations.c.id.in_(conversation_ids))
    )
    path = start.cte("current_path", recursive=True)
    parent = messages.alias("parent")
    return path.union_all(sa.select(parent.c.id, parent.c.parent_id).where(parent.c.id == path.c.parent_id))
