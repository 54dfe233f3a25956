"""Opening, loading and saving coaching sessions: each call is one short transaction."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime, timedelta

from service.chat import ConversationFields, Conversations
from service.coaching.events import Start
from service.domain import (
    PERSONA_NAME_MAX,
    FailedPrecondition,
    InvalidArgument,
    Message,
    MessageStatus,
    Need,
    NotFound,
    Principal,
    check_access,
    check_id,
    check_name,
    new_id,
    shown,
)
from service.domain.coaching import CoachingSession, SessionLimits
from service.domain.wrapup import EndReason, Position, Stage
from service.personas import Persona, PersonaCatalog
from service.ports import UnitOfWorkFactory

NO_LIMITS = SessionLimits()


class SessionRecords:
    def __init__(
        self,
        uow: UnitOfWorkFactory,
        conversations: Conversations,
        personas: PersonaCatalog,
        *,
        clock: Callable[[], datetime],
        default_limits: SessionLimits = NO_LIMITS,
    ) -> None:
        self._uow = uow
        self._conversations = conversations
        self._personas = personas
        self._clock = clock
        self._default_limits = default_limits

    async def open(self, principal: Principal, start: Start) -> tuple[CoachingSession, bool]:
        """The session `start` names (rejoined: True), or a new one in a new or given conversation."""
        if start.session_id:
            session = await self.load(principal, start.session_id)
            if session.stage is Stage.ENDED:
                raise FailedPrecondition(
                    "the coaching session has ended; start a new one", metadata={"stage": session.stage.value}
                )
            return session, True
        persona = self._persona(start.persona)
        limits = self._limits(start)
        conversation_id = await self._conversation(principal, start.conversation_id, persona)
        now = self._clock()
        session = CoachingSession(
            id=new_id(),
            owner=principal.user_id,
            conversation_id=conversation_id,
            persona=persona.name,
            limits=limits,
            stage=Stage.ACTIVE,
            end_reason=EndReason.NONE,
            turns_used=0,
            start_time=now,
            update_time=now,
        )
        async with self._uow() as uow:
            await uow.coaching_sessions.add(session)
            await uow.commit()
        return session, False

    async def load(self, principal: Principal, session_id: str) -> CoachingSession:
        session_id = check_id("start.session_id", session_id)
        async with self._uow() as uow:
            session = await uow.coaching_sessions.get(session_id)
        check_access(session, principal, "coaching session", need=Need.WRITE)
        assert session is not None
        return session

    async def claim(self, seen: CoachingSession, position: Position, *, turns: int = 0) -> CoachingSession | None:
        """Compare-and-set: move the stored session to `position` (counting `turns` more) under its row lock,
        only if it is still as `seen` (stage, end reason, turns: everything a decision reads that can change).
        None when another stream moved it meanwhile: the caller decides again on the stored session."""
        async with self._uow() as uow:
            current = await uow.coaching_sessions.get(seen.id, for_update=True)
            if current is None:  # the conversation, and the session with it, was deleted meanwhile
                raise NotFound("coaching session not found")
            if _decided_by(current) != _decided_by(seen):
                return None
            if position == current.position and not turns:
                return current  # nothing changes (joining a wrap-up under way): nothing to write
            updated = dataclasses.replace(
                current,
                stage=position.stage,
                end_reason=position.reason,
                turns_used=current.turns_used + turns,
                update_time=self._clock(),
            )
            await uow.coaching_sessions.update(updated)
            await uow.commit()
        return updated

    async def reply_in_flight(self, session: CoachingSession) -> Message | None:
        """The reply generating in the session's conversation, if any: at most one is, and it is always the
        conversation's newest message (nothing is added while a reply generates)."""
        async with self._uow() as uow:
            newest = await uow.messages.recent(session.conversation_id, limit=1)
        return next((m for m in newest if m.status is MessageStatus.STREAMING), None)

    async def model_of(self, session: CoachingSession) -> str:
        """The model of the session's conversation."""
        async with self._uow() as uow:
            conversation = await uow.conversations.get(session.conversation_id)
        if conversation is None:
            raise NotFound("coaching session not found")
        return conversation.model

    def _persona(self, name: str) -> Persona:
        if not name:
            raise InvalidArgument.field("start.persona", "is required to start a session (see ListPersonas)")
        check_name("start.persona", name, max_chars=PERSONA_NAME_MAX)
        persona = self._personas.get(name)
        if persona is None:
            raise InvalidArgument.field("start.persona", f"unknown persona {shown(name)!r}; see ListPersonas")
        return persona

    def _limits(self, start: Start) -> SessionLimits:
        if start.max_turns < 0:
            raise InvalidArgument.field("start.max_turns", "must not be negative")
        if start.max_duration < timedelta(0):
            raise InvalidArgument.field("start.max_duration", "must not be negative")
        defaults = self._default_limits
        return SessionLimits(start.max_turns or defaults.max_turns, start.max_duration or defaults.max_duration)

    async def _conversation(self, principal: Principal, conversation_id: str, persona: Persona) -> str:
        """A new conversation with the persona, or the caller's own one (given the persona if it has none)."""
        if not conversation_id:
            fields = ConversationFields(title=f"Coaching with {persona.display_name}", persona=persona.name)
            return (await self._conversations.create(principal, fields)).id
        conversation = await self._conversations.get(principal, conversation_id, need=Need.WRITE)
        if conversation.persona == persona.name:
            return conversation.id
        if conversation.persona or conversation.system_prompt:
            raise InvalidArgument.field(
                "start.conversation_id", "the conversation follows other instructions than the persona asked for"
            )
        fields = ConversationFields(persona=persona.name)
        await self._conversations.update(principal, conversation.id, fields, ["persona"])
        return conversation.id


def _decided_by(session: CoachingSession) -> tuple[Stage, EndReason, int]:
    """What of a stored session can change under a decision (its limits, owner and start never do)."""
    return session.stage, session.end_reason, session.turns_used
