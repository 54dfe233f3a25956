"""Conversation and message use cases. Each public method is one short transaction."""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from datetime import datetime
from typing import TypeVar

from service.attachments import with_attachment_ids
from service.branches import leaf_of, pinned, unpinned
from service.domain import (
    MODEL_NAME_MAX,
    PERSONA_NAME_MAX,
    TITLE_MAX,
    Conversation,
    ConversationScope,
    FailedPrecondition,
    InvalidArgument,
    Message,
    ModelInfo,
    ModelNotFound,
    Need,
    Page,
    Principal,
    SearchHit,
    Unavailable,
    check_id,
    check_name,
    check_text,
    new_id,
    search_terms,
    shown,
)
from service.export import ExportFormat, writer_for
from service.pagination import PageTokens, page_size
from service.personas import PersonaCatalog
from service.ports import Provider, RowsPage, UnitOfWork, UnitOfWorkFactory
from service.replies import Replies
from service.sharing import conversation_for

logger = logging.getLogger(__name__)

DEFAULT_TITLE = "New conversation"
# Text one response may carry: a page stops early rather than exceed what a default gRPC client accepts (4 MB);
# a character is at most 4 bytes of UTF-8, and a single message is far below this (CHAT_MAX_REPLY_CHARS).
RESPONSE_TEXT_CHARS = 750_000
UPDATABLE = frozenset({"title", "model", "persona", "system_prompt"})
NAME_COLUMNS = {"title": TITLE_MAX, "model": MODEL_NAME_MAX, "persona": PERSONA_NAME_MAX}
EXPORT_PAGE_SIZE = 100


@dataclasses.dataclass(frozen=True, slots=True)
class ConversationFields:
    title: str = ""
    model: str = ""
    persona: str = ""
    system_prompt: str = ""


class ModelCatalog:
    """The models conversations may use: the provider's, cached briefly (checking a name must not cost a
    provider round trip each time), and always the configured default model, under its configured name.

    Servers name their models their own way (llama.cpp server lists its file name, vLLM its served name,
    Ollama adds a `:latest` tag), so the default is offered and accepted as configured whatever the listing
    says; a server that does not know it says so when a reply asks for it (FAILED_PRECONDITION)."""

    def __init__(self, provider: Provider, *, default_model: str, ttl: float = 30.0) -> None:
        self._provider = provider
        self.default_model = default_model
        self._ttl = ttl
        self._cached: tuple[float, Sequence[ModelInfo]] | None = None

    async def models(self) -> Sequence[ModelInfo]:
        """The provider's models, with the entry for the default model named as configured (added if the
        provider does not list it under any of its names)."""
        listed = await self._listed()
        if any(m.name == self.default_model for m in listed):
            return listed
        tagged = next((m for m in listed if _same_model(m.name, self.default_model)), None)
        if tagged is None:
            return [*listed, ModelInfo(name=self.default_model, provider=self._provider.name)]
        named = dataclasses.replace(tagged, name=self.default_model)
        return [named if m is tagged else m for m in listed]

    async def check(self, name: str) -> None:
        """Raise ModelNotFound for a name the provider does not offer. An unreachable provider is not a
        reason to refuse a conversation: the reply will report it."""
        if name == self.default_model:
            return
        try:
            listed = await self._listed()
        except Unavailable:
            logger.warning("could not list models to check %r; accepting it", name)
            return
        if not any(_same_model(m.name, name) for m in listed):
            raise ModelNotFound(name)

    async def _listed(self) -> Sequence[ModelInfo]:
        if self._cached is None or time.monotonic() - self._cached[0] > self._ttl:
            self._cached = (time.monotonic(), await self._provider.list_models())
        return self._cached[1]


def _same_model(listed: str, name: str) -> bool:
    """Whether a listed model answers to `name`: the same, or `name` without its implicit `:latest` tag."""
    return listed in (name, f"{name}:latest")


class Conversations:
    def __init__(
        self,
        uow: UnitOfWorkFactory,
        replies: Replies,
        models: ModelCatalog,
        personas: PersonaCatalog,
        tokens: PageTokens,
        *,
        clock: Callable[[], datetime],
        max_prompt_bytes: int,
    ) -> None:
        self._uow = uow
        self._replies = replies
        self._models = models
        self._personas = personas
        self._tokens = tokens
        self._clock = clock
        self._max_prompt_bytes = max_prompt_bytes

    async def create(self, principal: Principal, fields: ConversationFields) -> Conversation:
        fields = await self._validated(fields, UPDATABLE, prefix="")
        now = self._clock()
        conversation = Conversation(
            id=new_id(),
            owner=principal.user_id,
            title=fields.title or DEFAULT_TITLE,
            model=fields.model or self._models.default_model,
            persona=fields.persona,
            system_prompt=fields.system_prompt,
            create_time=now,
            update_time=now,
        )
        async with self._uow() as uow:
            await uow.conversations.add(conversation)
            await uow.commit()
        return conversation

    async def get(self, principal: Principal, conversation_id: str, *, need: Need = Need.READ) -> Conversation:
        """A conversation the caller may `need` (a viewer reads the conversations shared with it)."""
        conversation_id = check_id("conversation_id", conversation_id)
        async with self._uow() as uow:
            return await conversation_for(uow, principal, conversation_id, need)

    async def list(
        self, principal: Principal, size: int, token: str, scope: ConversationScope = ConversationScope.OWNED
    ) -> Page[Conversation]:
        """The caller's conversations, those shared with the caller, or both (`scope`), newest activity first."""
        shared = "" if scope is ConversationScope.OWNED else f"\x00{scope.value}"  # OWNED keeps the tokens it had
        request = self._tokens.request(f"conversations:{principal.user_id}{shared}", size, token)
        limit, after = request.limit, request.after
        async with self._uow() as uow:
            if scope is ConversationScope.OWNED:
                rows = await uow.conversations.list_by_owner(principal.user_id, limit=limit, after=after)
            else:
                rows = await uow.shares.conversations(principal.user_id, scope, limit=limit, after=after)
        return request.page(rows.items, rows.cursor)

    async def update(
        self, principal: Principal, conversation_id: str, fields: ConversationFields, mask: Collection[str]
    ) -> Conversation:
        conversation_id = check_id("conversation.conversation_id", conversation_id)
        if not mask:  # AIP-134: no mask updates every field the caller set
            mask = {name for name in UPDATABLE if getattr(fields, name)}
        unknown = set(mask) - UPDATABLE
        if unknown:
            raise InvalidArgument.field("update_mask", f"cannot update {', '.join(map(shown, sorted(unknown)))}")
        fields = await self._validated(fields, frozenset(mask), prefix="conversation.")
        changes = {name: getattr(fields, name) for name in mask}
        if "title" in changes and not changes["title"]:
            changes["title"] = DEFAULT_TITLE
        if "model" in changes and not changes["model"]:
            changes["model"] = self._models.default_model
        async with self._uow() as uow:
            current = await conversation_for(uow, principal, conversation_id, Need.WRITE, for_update=True)
            merged = dataclasses.replace(current, **changes, update_time=self._clock())
            if merged.persona and merged.system_prompt:
                raise InvalidArgument.field("conversation.persona", "cannot be combined with a system_prompt")
            await uow.conversations.update(merged)
            await uow.commit()
        return merged

    async def delete(self, principal: Principal, conversation_id: str) -> None:
        conversation_id = check_id("conversation_id", conversation_id)
        async with self._uow() as uow:
            await conversation_for(uow, principal, conversation_id, Need.WRITE)
            await uow.messages.request_cancel_all(conversation_id)
            await uow.commit()
        # Replies in flight here stop and are stored before their rows go; other replicas stop on their next flush.
        await self._replies.stop_conversation(conversation_id)
        async with self._uow() as uow:
            await uow.conversations.delete(conversation_id)
            await uow.commit()

    async def messages(
        self, principal: Principal, conversation_id: str, size: int, token: str, branch_message_id: str = ""
    ) -> Page[Message]:
        """The current branch, or the one through `branch_message_id`, oldest first. A page token holds the leaf of
        the branch it lists: its pages stay on that branch even when the current branch changes meanwhile."""
        conversation_id = check_id("conversation_id", conversation_id)
        request = self._tokens.request(
            f"messages:{principal.user_id}:{conversation_id}" + (f":{branch_message_id}" if branch_message_id else ""),
            size,
            token,
        )
        limit, after = request.limit, request.after
        async with self._uow() as uow:
            conversation = await conversation_for(uow, principal, conversation_id, Need.READ)
            if after is None:
                leaf = await leaf_of(uow, conversation, branch_message_id, field="branch_message_id")
            else:
                leaf, after = unpinned(after, conversation.current_message_id)
            rows = await _bounded(functools.partial(_page_of, uow, conversation_id, leaf, after), limit)
            if after is not None and not rows.items and not await _in(uow, conversation_id, leaf):
                raise FailedPrecondition("the branch this page token lists was deleted; list it from the start")
            items = await with_attachment_ids(uow, rows.items)
        return request.page(items, pinned(leaf, rows.cursor))

    async def search(
        self,
        principal: Principal,
        query: str,
        size: int,
        token: str,
        scope: ConversationScope = ConversationScope.OWNED,
    ) -> Page[SearchHit]:
        """Final messages matching every word of `query`, most relevant first, in the caller's conversations, those
        shared with the caller, or both (`scope`)."""
        terms = search_terms(query)
        shared = "" if scope is ConversationScope.OWNED else f"\x00{scope.value}"
        request = self._tokens.request("search:" + principal.user_id + shared + "\x00" + " ".join(terms), size, token)
        limit, after = request.limit, request.after
        async with self._uow() as uow:
            messages = uow.messages
            rows = await _bounded(
                lambda n: messages.search(principal.user_id, terms, limit=n, after=after, scope=scope),
                limit,
                size=lambda hit: len(hit.message.content) + len(hit.snippet),
            )
        return request.page(rows.items, rows.cursor)

    async def export(
        self,
        principal: Principal,
        conversation_id: str,
        fmt: ExportFormat | None,
        *,
        first_index: int = 0,
        header: bool = True,
        branch_message_id: str = "",
    ) -> AsyncIterator[str]:
        """The current branch (or the one through `branch_message_id`) as a file, in pieces: messages are read a page
        per short transaction, all from the branch as it was when the export began."""
        conversation_id = check_id("conversation_id", conversation_id)
        if fmt is None:
            raise InvalidArgument.field("format", "must be MARKDOWN, JSON or CSV")
        if first_index < 0:
            raise InvalidArgument.field("first_index", "must not be negative")
        async with self._uow() as uow:
            conversation = await conversation_for(uow, principal, conversation_id, Need.READ)
            leaf = await leaf_of(uow, conversation, branch_message_id, field="branch_message_id")
        writer = writer_for(fmt, first_index=first_index or 1, header=header)
        yield writer.begin(conversation)
        after: str | None = None
        while True:
            async with self._uow() as uow:
                rows = await _bounded(functools.partial(_page_of, uow, conversation_id, leaf, after), EXPORT_PAGE_SIZE)
            yield writer.messages(rows.items)
            if rows.cursor is None:
                break
            after = rows.cursor
        yield writer.end()

    async def models(self, size: int, token: str) -> Page[ModelInfo]:
        page_size(size)  # checked before the provider is asked
        self._tokens.offset("models", token)
        return self._tokens.slice("models", sorted(await self._models.models(), key=lambda m: m.name), size, token)

    async def _validated(
        self, fields: ConversationFields, names: Collection[str], *, prefix: str
    ) -> ConversationFields:
        for name, max_chars in NAME_COLUMNS.items():
            if name in names:
                check_name(f"{prefix}{name}", getattr(fields, name), max_chars=max_chars)
        if "system_prompt" in names:
            check_text(
                f"{prefix}system_prompt",
                fields.system_prompt,
                max_bytes=self._max_prompt_bytes,
                required=False,
            )
        if "persona" in names and fields.persona and self._personas.get(fields.persona) is None:
            raise InvalidArgument.field(
                f"{prefix}persona", f"unknown persona {shown(fields.persona)!r}; see ListPersonas"
            )
        if {"persona", "system_prompt"} <= set(names) and fields.persona and fields.system_prompt:
            raise InvalidArgument.field(f"{prefix}persona", "cannot be combined with a system_prompt")
        if "model" in names and fields.model:
            await self._models.check(fields.model)
        return fields


T = TypeVar("T")


async def _page_of(
    uow: UnitOfWork, conversation_id: str, leaf_id: str, after: str | None, limit: int
) -> RowsPage[Message]:
    # Also without a leaf (an empty conversation): the storage reads `after` strictly all the same.
    return await uow.messages.list_branch(conversation_id, leaf_id, limit=limit, after=after)


async def _in(uow: UnitOfWork, conversation_id: str, message_id: str) -> bool:
    """Whether `message_id` is a message of the conversation."""
    message = await uow.messages.get(message_id) if message_id else None
    return message is not None and message.conversation_id == conversation_id


async def _bounded(
    fetch: Callable[[int], Awaitable[RowsPage[T]]],
    limit: int,
    *,
    size: Callable[[T], int] = lambda message: len(message.content),  # type: ignore[attr-defined]
) -> RowsPage[T]:
    """A page of at most `limit` items whose text fits one response (RESPONSE_TEXT_CHARS), but never empty: when
    the first fetch is too big, fetch again only as many as fit (the storage's cursor stays exact)."""
    page = await fetch(limit)
    total, fitting = 0, 0
    for item in page.items:
        total += size(item)
        if total > RESPONSE_TEXT_CHARS:
            break
        fitting += 1
    if fitting == len(page.items):
        return page
    return await fetch(max(fitting, 1))
