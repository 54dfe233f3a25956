"""Read-only sharing: the owner of a conversation grants another user the viewer role, revokes it, lists the grants;
and the access rule (`domain.check_access`) applied to stored conversations and messages, which every use case
goes through.

A viewer reads the conversation (GetConversation, ListMessages, ExportConversation, ResumeReply, SearchMessages
with a scope that includes shared conversations, the attachments its messages carry) and writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from service.auth.principals import check_user_id
from service.domain import (
    Conversation,
    InvalidArgument,
    Message,
    Need,
    NotFound,
    Page,
    Principal,
    Share,
    ShareRole,
    check_id,
    check_shared_access,
    shown,
)
from service.pagination import PageTokens
from service.ports import UnitOfWork, UnitOfWorkFactory


class Sharing:
    def __init__(self, uow: UnitOfWorkFactory, tokens: PageTokens, *, clock: Callable[[], datetime]) -> None:
        self._uow = uow
        self._tokens = tokens
        self._clock = clock

    async def share(
        self, principal: Principal, conversation_id: str, user_id: str, role: ShareRole = ShareRole.VIEWER
    ) -> Share:
        """ShareConversation (the owner only): the grant, or the one `user_id` already had."""
        conversation_id = check_id("conversation_id", conversation_id)
        user_id = check_user_id(user_id)  # as API keys and JWTs name users
        async with self._uow() as uow:
            # Locked: two shares with the same user at once store one grant, and the second returns it.
            conversation = await conversation_for(uow, principal, conversation_id, Need.WRITE, for_update=True)
            if user_id == conversation.owner:
                raise InvalidArgument.field("user_id", "is the conversation's owner, who has every access already")
            share = await uow.shares.add(Share(conversation_id, user_id, role, self._clock()))
            await uow.commit()
        return share

    async def unshare(self, principal: Principal, conversation_id: str, user_id: str) -> None:
        """UnshareConversation (the owner only): `user_id` can no longer read the conversation."""
        conversation_id = check_id("conversation_id", conversation_id)
        user_id = check_user_id(user_id)
        async with self._uow() as uow:
            await conversation_for(uow, principal, conversation_id, Need.WRITE)
            if not await uow.shares.remove(conversation_id, user_id):
                raise NotFound(f"the conversation is not shared with {shown(user_id)!r}", metadata={"userId": user_id})
            await uow.commit()

    async def shares(self, principal: Principal, conversation_id: str, size: int, token: str) -> Page[Share]:
        """ListConversationShares (the owner only): the grants, by user id."""
        conversation_id = check_id("conversation_id", conversation_id)
        request = self._tokens.request(f"shares:{principal.user_id}:{conversation_id}", size, token)
        async with self._uow() as uow:
            await conversation_for(uow, principal, conversation_id, Need.WRITE)
            rows = await uow.shares.list_by_conversation(conversation_id, limit=request.limit, after=request.after)
        return request.page(rows.items, rows.cursor)


async def authorize(
    uow: UnitOfWork, principal: Principal, resource: Conversation | Message | None, kind: str, need: Need
) -> None:
    """`domain.check_shared_access` for a stored conversation or message: the grant is the caller's share of its
    conversation."""

    async def granted() -> bool:
        assert resource is not None
        conversation_id = resource.id if isinstance(resource, Conversation) else resource.conversation_id
        return await uow.shares.get(conversation_id, principal.user_id) is not None

    await check_shared_access(resource, principal, kind, need=need, granted=granted)


async def conversation_for(
    uow: UnitOfWork, principal: Principal, conversation_id: str, need: Need, *, for_update: bool = False
) -> Conversation:
    """The conversation, if the caller may `need` it (NOT_FOUND, PERMISSION_DENIED otherwise)."""
    conversation = await uow.conversations.get(conversation_id, for_update=for_update)
    await authorize(uow, principal, conversation, "conversation", need)
    assert conversation is not None
    return conversation
