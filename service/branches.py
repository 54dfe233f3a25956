"""The message tree's use cases: which branch is current, a message's siblings, deleting a message and what follows
it. Each public method is one short transaction (deleting: two, with the replies stopped in between).

Every message has a parent (a first message has none) and a conversation has a current branch: the path from a
first message to its leaf, `Conversation.current_message_id`. New messages go on the end of the current branch,
and a reply in flight is always its leaf (it becomes current as it starts, and nothing moves the current branch
while it generates)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime

from service.attachments import with_attachment_ids
from service.domain import (
    Conversation,
    InvalidArgument,
    Message,
    Need,
    NotFound,
    Page,
    Principal,
    check_id,
)
from service.pagination import PageTokens
from service.ports import UnitOfWork, UnitOfWorkFactory
from service.replies import Replies
from service.sharing import authorize, conversation_for


class Branches:
    def __init__(
        self, uow: UnitOfWorkFactory, replies: Replies, tokens: PageTokens, *, clock: Callable[[], datetime]
    ) -> None:
        self._uow = uow
        self._replies = replies
        self._tokens = tokens
        self._clock = clock

    async def set_current(self, principal: Principal, conversation_id: str, message_id: str) -> Conversation:
        """Make the branch through `message_id` current: it ends at the newest leaf under that message. Refused
        (FAILED_PRECONDITION) while a reply generates: that reply must stay the current branch's leaf."""
        conversation_id = check_id("conversation_id", conversation_id)
        message_id = check_id("message_id", message_id)
        now = self._clock()
        async with self._uow() as uow:
            conversation = await conversation_for(uow, principal, conversation_id, Need.WRITE, for_update=True)
            leaf = await leaf_of(uow, conversation, message_id, field="message_id")
            await self._replies.ensure_idle(uow, conversation, now)
            await uow.conversations.set_current(conversation_id, leaf, now)
            await uow.commit()
        return dataclasses.replace(conversation, current_message_id=leaf, update_time=now)

    async def siblings(self, principal: Principal, message_id: str, size: int, token: str) -> Page[Message]:
        """`message_id` and the messages sharing its parent, oldest first (a viewer of the conversation may too)."""
        message = await self._message(principal, message_id, Need.READ)
        request = self._tokens.request(
            f"siblings:{principal.user_id}:{message.conversation_id}:{message.parent_id}", size, token
        )
        async with self._uow() as uow:
            rows = await uow.messages.list_siblings(message, limit=request.limit, after=request.after)
            items = await with_attachment_ids(uow, rows.items)
        return request.page(items, rows.cursor)

    async def delete(self, principal: Principal, message_id: str) -> tuple[Conversation, int]:
        """Delete `message_id` and every message under it, cancelling a reply generating among them first (as
        deleting a conversation does). When the current branch went with them, the newest leaf left under the
        deleted message's parent becomes current (the parent itself when nothing else follows it). Returns the
        conversation and how many messages were deleted."""
        message = await self._message(principal, message_id, Need.WRITE)
        async with self._uow() as uow:
            streaming = await uow.messages.streaming_under(message.conversation_id, message.id)
            for reply_id in streaming:
                await uow.messages.request_cancel(reply_id)
            await uow.commit()
        # Replies in flight here stop and are stored before their rows go; other replicas stop on their next flush.
        await self._replies.stop(streaming)
        now = self._clock()
        async with self._uow() as uow:
            conversation = await uow.conversations.get(message.conversation_id, for_update=True)
            deleted = await uow.messages.delete_subtree(message.conversation_id, message.id) if conversation else 0
            if conversation is None or not deleted:
                raise NotFound("message not found")  # deleted meanwhile
            leaf = conversation.current_message_id
            if leaf and await uow.messages.get(leaf) is None:  # the current branch went with them
                leaf = await uow.messages.newest_leaf(conversation.id, message.parent_id or None) or ""
            await uow.conversations.set_current(conversation.id, leaf, now)
            await uow.commit()
        return dataclasses.replace(conversation, current_message_id=leaf, update_time=now), deleted

    async def _message(self, principal: Principal, message_id: str, need: Need) -> Message:
        message_id = check_id("message_id", message_id)
        async with self._uow() as uow:
            message = await uow.messages.get(message_id)
            await authorize(uow, principal, message, "message", need)
        assert message is not None
        return message


async def leaf_of(uow: UnitOfWork, conversation: Conversation, message_id: str, *, field: str) -> str:
    """The leaf of the branch through `message_id` (the newest message under it), or of the current branch when
    `message_id` is empty. A message of another conversation, or none, is INVALID_ARGUMENT `field`."""
    if not message_id:
        return conversation.current_message_id
    message_id = check_id(field, message_id)
    message = await uow.messages.get(message_id)
    if message is None or message.conversation_id != conversation.id:
        raise InvalidArgument.field(field, "is not a message of this conversation")
    leaf = await uow.messages.newest_leaf(conversation.id, message_id)
    assert leaf is not None  # the message itself at least
    return leaf


def pinned(leaf_id: str, cursor: str | None) -> str | None:
    """A branch listing's cursor: the storage's position on the branch, and the leaf it lists, so that its pages
    stay on one branch even when the current branch changes meanwhile."""
    return f"{leaf_id}|{cursor}" if cursor is not None else None


def unpinned(after: str, current: str) -> tuple[str, str]:
    """The leaf and the storage's position a branch listing's cursor holds (strictly: it came from a caller). A
    cursor of the release before the tree (a position alone) lists the `current` branch."""
    if "|" not in after:
        return current, after
    leaf_id, _, position = after.partition("|")
    try:
        return check_id("page_token", leaf_id), position
    except InvalidArgument:
        raise InvalidArgument.field("page_token", "is not a page token issued for this listing") from None
