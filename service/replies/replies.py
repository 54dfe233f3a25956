"""Reply use cases: start a generation, follow it from any offset, cancel it, and the replica's lifecycle."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from service.attachments import check_attachment_ids, for_message, with_attachment_ids
from service.domain import (
    ChatTurn,
    Conversation,
    DuplicateRequest,
    FailedPrecondition,
    InvalidArgument,
    Message,
    MessageStatus,
    Need,
    NotFound,
    OutOfRange,
    Principal,
    Prompt,
    Role,
    Unavailable,
    check_id,
    check_request_id,
    check_text,
    estimate_tokens,
    history_window,
    new_id,
    reply_error,
)
from service.personas import PersonaCatalog
from service.ports import ModelCallObserver, Notifications, Provider, UnitOfWork, UnitOfWorkFactory
from service.replies.buffer import Delta, Ended, Rewind, read
from service.replies.generation import Generation, Producer, StreamGate
from service.replies.generations import ABANDONED_MESSAGE, Generations
from service.replies.remote import RemoteFollower
from service.sharing import authorize

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReplyOptions:
    """How replies are made: message and reply sizes, the history window, flush and lease timing, model attempts
    (the CHAT_* settings, through `service.wiring.Options`)."""

    max_message_bytes: int = 32 * 1024
    max_reply_tokens: int = 512
    history_token_budget: int = 3072
    history_max_messages: int = 200
    flush_interval: float = 0.25
    lease_seconds: float = 10.0
    provider_attempts: int = 3
    max_reply_chars: int = 100_000
    max_model_streams: int = 1024
    max_continuations: int = 2


@dataclass(frozen=True, slots=True)
class Started:
    """First event of a reply stream: the user message and the assistant message as stored."""

    user_message: Message | None
    assistant_message: Message


ReplyEvent = Started | Delta | Rewind | Ended


@dataclass(frozen=True, slots=True)
class _Reply:
    user: Message | None  # None for a reply no user message asked for
    assistant: Message


class Replies:
    """Owns every generation this replica runs. RPCs subscribe to generations; they never own them."""

    def __init__(
        self,
        uow: UnitOfWorkFactory,
        provider: Provider,
        personas: PersonaCatalog,
        *,
        replica_id: str,
        clock: Callable[[], datetime],
        notifications: Notifications,
        options: ReplyOptions = ReplyOptions(),
        model_calls: ModelCallObserver | None = None,
    ) -> None:
        self._uow = uow
        self._personas = personas
        self._replica_id = replica_id
        self._clock = clock
        self._options = options
        self._takes_images = provider.takes_images
        self._closing = False
        self._remote = RemoteFollower(
            uow,
            clock=clock,
            poll_interval=options.flush_interval,
            lease_seconds=options.lease_seconds,
            notifications=notifications,
            on_stalled=lambda message: self.generations.take_over(message),
        )
        self.generations = Generations(
            uow,
            Producer(
                provider,
                attempts=options.provider_attempts,
                max_chars=options.max_reply_chars,
                gate=StreamGate(options.max_model_streams),
                observer=model_calls,
            ),
            replica_id=replica_id,
            clock=clock,
            flush_interval=options.flush_interval,
            lease_seconds=options.lease_seconds,
            on_changed=self._remote.publish,
            continuation=self._continuation,
            max_continuations=options.max_continuations,
        )
        self._flusher_task: asyncio.Task[None] | None = None
        self._starting: set[asyncio.Task[_Reply]] = set()

    # ------------------------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Continue (or end) the replies this replica left behind (it restarted) and start the flusher."""
        await self.generations.sweep(mine=True)
        self._flusher_task = asyncio.create_task(self.generations.run_flusher(), name="reply-flusher")

    async def close(self, grace: float) -> None:
        """Refuse new replies, let those in flight finish within `grace` seconds, end the rest INTERRUPTED."""
        self._closing = True
        if self._starting:  # replies being started (committed, not yet launched) are in flight too
            await asyncio.wait(self._starting, timeout=grace)
        await self.generations.close(grace)
        if self._flusher_task:
            self._flusher_task.cancel()
            await asyncio.gather(self._flusher_task, return_exceptions=True)

    @property
    def in_flight(self) -> int:
        return len(self.generations)

    # ------------------------------------------------------------------------------------------ use cases

    async def stream(
        self,
        principal: Principal,
        conversation_id: str,
        content: str,
        request_id: str,
        *,
        steer: str = "",
        attachment_ids: Sequence[str] = (),
    ) -> AsyncIterator[ReplyEvent]:
        """StreamReply: store the user message (carrying `attachment_ids`), start (or attach to) the reply, and
        follow it. `steer` is an instruction the model sees after the history for this reply only (never stored)."""
        reply = await self._begin(principal, conversation_id, content, request_id, steer, attachment_ids)
        yield Started(reply.user, reply.assistant)
        async for event in self._follow(reply.assistant, 0):
            yield event

    async def stream_unprompted(
        self, principal: Principal, conversation_id: str, steer: str, request_id: str = ""
    ) -> AsyncIterator[ReplyEvent]:
        """A reply with no new user message, steered by `steer` (closing words when a session ends). A known
        `request_id` attaches to the reply it made, with or without a user message."""
        reply = await self._begin(principal, conversation_id, None, request_id, steer)
        yield Started(None, reply.assistant)
        async for event in self._follow(reply.assistant, 0):
            yield event

    async def record(
        self, principal: Principal, conversation_id: str, content: str, answer: str
    ) -> tuple[Message, Message]:
        """Store a user message and a fixed assistant answer (no model involved): (user, assistant)."""
        conversation_id = check_id("conversation_id", conversation_id)
        check_text("content", content, max_bytes=self._options.max_message_bytes, required=True)
        now = self._clock()
        async with self._uow() as uow:
            conversation = await uow.conversations.get(conversation_id, for_update=True)
            await authorize(uow, principal, conversation, "conversation", Need.WRITE)
            assert conversation is not None
            await self.ensure_idle(uow, conversation, now)
            request_id = new_id()
            user = _message(
                conversation_id, principal, Role.USER, content, now, request_id, conversation.current_message_id
            )
            later = now + timedelta(microseconds=1)
            assistant = _message(conversation_id, principal, Role.ASSISTANT, answer, later, request_id, user.id)
            await uow.messages.add(user, assistant)
            await uow.conversations.set_current(conversation_id, assistant.id, later)
            await uow.commit()
        return user, assistant

    async def send(
        self,
        principal: Principal,
        conversation_id: str,
        content: str,
        request_id: str,
        *,
        background: bool,
        attachment_ids: Sequence[str] = (),
    ) -> tuple[Message, Message]:
        """SendMessage: (user message, assistant message) — the latter final, or STREAMING if `background`."""
        reply = await self._begin(principal, conversation_id, content, request_id, attachment_ids=attachment_ids)
        user = reply.user
        assert user is not None  # a reply to a message always has its user message
        if background:
            return user, reply.assistant
        async for event in self._follow(reply.assistant, 0):
            if isinstance(event, Ended):
                return user, event.message
        raise AssertionError("a followed reply always ends with Ended or an error")

    async def regenerate(self, principal: Principal, message_id: str, request_id: str) -> AsyncIterator[ReplyEvent]:
        """RegenerateReply: a new reply beside the assistant reply `message_id` (same parent, the branch up to it as
        history), or to the message `message_id` itself when it is not an assistant reply; it becomes current."""
        target = await self._owned_message(principal, message_id)
        parent = target.parent_id if target.role is Role.ASSISTANT else target.id
        answered = target if target.role is not Role.ASSISTANT else await self._message_or_none(parent)
        reply = await self._begin(principal, target.conversation_id, None, request_id, parent=parent)
        yield Started(answered if answered is not None and answered.role is Role.USER else None, reply.assistant)
        async for event in self._follow(reply.assistant, 0):
            yield event

    async def edit(
        self, principal: Principal, message_id: str, content: str, request_id: str
    ) -> AsyncIterator[ReplyEvent]:
        """EditMessage: a sibling of `message_id` with the new `content`, which becomes current; the old branch stays.
        A user message's sibling carries the same files and gets a reply (streamed as by `stream`); an assistant
        message's sibling is the correction itself, stored COMPLETED: a reply's stored text never changes, and the
        model is not called."""
        target = await self._owned_message(principal, message_id)
        check_text("content", content, max_bytes=self._options.max_message_bytes, required=True)
        if target.role is Role.ASSISTANT:
            answered, correction = await self._correct(principal, target, content, check_request_id(request_id))
            yield Started(answered, correction)
            yield Delta(correction.content, 0, correction.generation)
            yield Ended(correction)
            return
        files = target.attachment_ids  # the edit changes the text; the files the message carries stay
        reply = await self._begin(
            principal, target.conversation_id, content, request_id, attachment_ids=files, parent=target.parent_id
        )
        yield Started(reply.user, reply.assistant)
        async for event in self._follow(reply.assistant, 0):
            yield event

    async def resume(
        self, principal: Principal, message_id: str, offset: int, generation: int = 0
    ) -> AsyncIterator[ReplyEvent]:
        """ResumeReply: the reply's text from `offset` as far as generated, then live, then its end. A reader
        whose text past some offset was never stored (`generation`: the one it read from) is rewound first."""
        message_id = check_id("message_id", message_id)
        if offset < 0:
            raise InvalidArgument.field("offset", "must not be negative")
        async with self._uow() as uow:
            message = await self._reply(uow, principal, message_id, Need.READ)
            related = await with_attachment_ids(
                uow, await uow.messages.find_by_request(message.owner, message.request_id)
            )
        user = next((m for m in related if m.role is Role.USER), None)
        if generation < 0:
            raise InvalidArgument.field("generation", "must not be negative")
        # Past the end of a final reply: a reader that got text from it (it names a generation) was sent text that
        # was never stored (its replica stopped first), and is rewound; an offset out of the blue is out of range.
        if message.status.is_final and offset > len(message.content) and not generation:
            raise OutOfRange.past_the_end(offset, len(message.content))
        yield Started(user, message)
        async for event in self._follow(message, offset, generation):
            yield event

    async def cancel(self, principal: Principal, message_id: str) -> Message:
        """CancelReply: stop a reply in flight, here or on another replica; returns it CANCELLED."""
        message_id = check_id("message_id", message_id)
        async with self._uow() as uow:
            message = await self._reply(uow, principal, message_id, Need.WRITE)
            if message.status is MessageStatus.STREAMING and self.generations.get(message.id) is None:
                await uow.messages.request_cancel(message.id)
                await uow.commit()
        if message.status is MessageStatus.CANCELLED:
            return message
        if message.status.is_final:
            raise FailedPrecondition(
                f"the reply is not generating (it is {message.status.value})",
                metadata={"status": message.status.value},
            )
        generation = self.generations.get(message.id)
        if generation is not None:
            generation.stop(MessageStatus.CANCELLED)
            final = (await generation.ended()).message
        else:
            final = await self._remote.wait_final(message, cancel=True)
        if final.status is not MessageStatus.CANCELLED:
            raise FailedPrecondition(
                f"the reply ended before it could be cancelled (it is {final.status.value})",
                metadata={"status": final.status.value},
            )
        return final

    async def stop_conversation(self, conversation_id: str) -> None:
        """Stop this replica's replies in a conversation (it is being deleted) and wait until they are stored."""
        await _stopped(self.generations.in_conversation(conversation_id))

    async def stop(self, message_ids: Collection[str]) -> None:
        """Stop this replica's replies among `message_ids` (they are being deleted) and wait until they are stored."""
        await _stopped([g for g in map(self.generations.get, message_ids) if g is not None])

    async def ensure_idle(
        self, uow: UnitOfWork, conversation: Conversation, now: datetime, *, branch: Sequence[Message] = ()
    ) -> None:
        """Refuse a change to the conversation while a reply generates in it (FAILED_PRECONDITION), ending one whose
        replica stopped. A reply in flight is always the current branch's leaf — it becomes current as it starts, and
        nothing moves the current branch while it generates — so the leaf shows it (`branch`: the messages just read
        up to some message, used when they end at the leaf)."""
        leaf_id = conversation.current_message_id
        leaf = branch[-1] if branch and branch[-1].id == leaf_id else None
        if leaf is None and leaf_id:
            leaf = await uow.messages.get(leaf_id)
        if leaf is None or leaf.status is not MessageStatus.STREAMING:
            return
        ended = await uow.messages.mark_abandoned(
            now=now,
            status=MessageStatus.INTERRUPTED.value,
            error_message=ABANDONED_MESSAGE,
            message_id=leaf.id,
        )
        if not ended:
            raise FailedPrecondition(
                "a reply is already being generated in this conversation; wait for it or cancel it",
                metadata={"messageId": leaf.id},
            )

    # ------------------------------------------------------------------------------------------ internals

    async def _begin(
        self,
        principal: Principal,
        conversation_id: str,
        content: str | None,
        request_id: str,
        steer: str = "",
        attachment_ids: Sequence[str] = (),
        *,
        parent: str | None = None,
    ) -> _Reply:
        """Store the user message (`content`; None: none) and the reply, under `parent` (None: the current branch's
        leaf; "": as a first message), and start generating."""
        conversation_id = check_id("conversation_id", conversation_id)
        if content is not None:
            check_text("content", content, max_bytes=self._options.max_message_bytes, required=True)
        request_id = check_request_id(request_id)
        files = check_attachment_ids(attachment_ids)
        if self._closing:
            raise Unavailable("the service is shutting down; retry on another replica")
        # Shielded: once the user message is committed the model must be called, even if the caller's deadline
        # passes (or it disconnects) in between — otherwise the reply is left STREAMING with nothing generating.
        inserting = self._insert(
            principal,
            conversation_id,
            content,
            request_id or new_id(),
            steer,
            retry=bool(request_id),
            files=files,
            parent=parent,
        )
        starting = asyncio.create_task(inserting)
        self._starting.add(starting)
        starting.add_done_callback(self._started)
        try:
            return await asyncio.shield(starting)
        except DuplicateRequest:
            # A concurrent retry with the same request_id won the insert: attach to its reply.
            async with self._uow() as uow:
                existing = await uow.messages.find_by_request(principal.user_id, request_id)
            return self._attach(existing, conversation_id, content, parent)

    async def _insert(
        self,
        principal: Principal,
        conversation_id: str,
        content: str | None,
        request_id: str,
        steer: str,
        *,
        retry: bool,
        files: tuple[str, ...] = (),
        parent: str | None = None,
    ) -> _Reply:
        """One transaction on the first-token path, in as few round trips as it can: lock and touch the
        conversation and make the reply its current leaf (one statement on Postgres), look for an earlier attempt
        (only for a request id the client chose), read the branch the reply answers (its history, with the ids of
        the files each message carries), insert both messages (one statement), read the files the history carries
        (only when it carries some; the new message's files are checked and linked first), commit."""
        now = self._clock()
        # A microsecond later keeps (create_time) order equal to insertion order for readers that sort by it.
        later = now + timedelta(microseconds=1)
        reply_id = new_id()
        async with self._uow() as uow:
            # Locked, touched and given the reply as its leaf in one statement; the conversation is as it was
            # before. A refusal below, or an earlier attempt found, leaves the transaction uncommitted.
            conversation = await uow.conversations.start_reply(conversation_id, reply_id, later)
            await authorize(uow, principal, conversation, "conversation", Need.WRITE)
            assert conversation is not None
            # Looked up under the conversation's lock: a concurrent retry with this request_id that got the lock
            # first has committed its messages by now, and this one attaches to them. A request id made here is new.
            existing = await uow.messages.find_by_request(principal.user_id, request_id) if retry else ()
            if existing and (content is not None or _answered(existing)):
                return self._attach(existing, conversation_id, content, parent)
            # An unprompted reply (a session's closing words) deleted since is made again: those following it rejoin.
            after = conversation.current_message_id if parent is None else parent
            history = await self._branch(uow, conversation_id, after)
            if parent and (not history or history[-1].id != parent):
                raise NotFound("message not found")  # deleted since the request read it
            await self.ensure_idle(uow, conversation, now, branch=history)
            user = (
                await self._user_message(uow, principal, conversation_id, content, now, request_id, files, after)
                if content is not None
                else None
            )
            assistant = Message(
                id=reply_id,
                conversation_id=conversation_id,
                owner=principal.user_id,
                role=Role.ASSISTANT,
                content="",
                status=MessageStatus.STREAMING,
                create_time=later,
                update_time=later,
                model=conversation.model,
                request_id=request_id,
                parent_id=user.id if user is not None else after,
            )
            lease = self.generations.new_lease(now)
            await uow.messages.add(*([user] if user is not None else []), assistant, lease=lease)
            if user is not None and user.attachment_ids:
                await uow.attachments.link(user.id, user.attachment_ids)
            prompt = await self._prompt(uow, conversation, [*history, user] if user is not None else history, steer)
            await uow.commit()
        # The user message is committed: only now is the model called.
        self.generations.launch(assistant, prompt, lease)
        return _Reply(user, assistant)

    async def _user_message(
        self,
        uow: UnitOfWork,
        principal: Principal,
        conversation_id: str,
        content: str,
        now: datetime,
        request_id: str,
        files: tuple[str, ...],
        parent_id: str,
    ) -> Message:
        """A new user message after `parent_id`, carrying `files` (checked: the caller's, sendable, within the
        context budget)."""
        user = _message(conversation_id, principal, Role.USER, content, now, request_id, parent_id)
        budget = self._options.history_token_budget
        await for_message(uow, principal, files, content=content, takes_images=self._takes_images, budget=budget)
        return dataclasses.replace(user, attachment_ids=files)

    def _started(self, task: asyncio.Task[_Reply]) -> None:
        self._starting.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved here: its caller may have gone (the error is theirs, not a crash)

    def _attach(
        self, existing: Sequence[Message], conversation_id: str, content: str | None, parent: str | None = None
    ) -> _Reply:
        """The reply `existing` (one request's messages) made, if it answers the same thing. Without `content`
        (an unprompted reply) any earlier reply of the request in the same conversation is the one; with `parent`
        (a regenerated reply, an edit) it must be under the same parent."""
        user = next((m for m in existing if m.role is Role.USER), None)
        assistant = next((m for m in existing if m.role is Role.ASSISTANT), None)
        regenerating = parent is not None and content is None
        if assistant is None and user is not None and not regenerating:
            raise NotFound("the reply this request_id made was deleted; send it again with a new request_id")
        if assistant is None or (user is None and content is not None) or (user is not None and regenerating):
            raise InvalidArgument.field("request_id", "was already used by another kind of request")
        same_text = content is None or (user is not None and user.content == content)
        same_place = parent is None or (user or assistant).parent_id == parent
        if assistant.conversation_id != conversation_id or not same_text or not same_place:
            raise InvalidArgument.field("request_id", "was already used for a different message")
        return _Reply(user, assistant)

    async def _correct(
        self, principal: Principal, target: Message, content: str, request_id: str
    ) -> tuple[Message | None, Message]:
        """Store a correction of the assistant message `target` (its sibling, COMPLETED, made current): the user
        message it answers, if any, and the correction; a retry with the same `request_id` gets the one it made."""
        now = self._clock()
        correction = dataclasses.replace(
            _message(target.conversation_id, principal, Role.ASSISTANT, content, now, request_id or new_id()),
            parent_id=target.parent_id,
        )
        try:
            async with self._uow() as uow:
                conversation = await uow.conversations.touch_and_lock(target.conversation_id, now)
                await authorize(uow, principal, conversation, "conversation", Need.WRITE)
                assert conversation is not None
                existing = await uow.messages.find_by_request(principal.user_id, request_id) if request_id else ()
                if existing:
                    correction = _correction_in(existing, correction)
                else:
                    await self.ensure_idle(uow, conversation, now)
                    if await uow.messages.get(target.id) is None:
                        raise NotFound("message not found")  # deleted since the request read it
                    await uow.messages.add(correction)
                    await uow.conversations.set_current(conversation.id, correction.id, now)
                    await uow.commit()
        except DuplicateRequest:  # the same request_id, committed meanwhile by a request in another conversation
            async with self._uow() as uow:
                correction = _correction_in(
                    await uow.messages.find_by_request(principal.user_id, request_id), correction
                )
        answered = await self._message_or_none(target.parent_id)
        return (answered if answered is not None and answered.role is Role.USER else None), correction

    async def _branch(self, uow: UnitOfWork, conversation_id: str, leaf_id: str) -> Sequence[Message]:
        """The history a reply under `leaf_id` sees: the newest messages of the branch up to it."""
        if not leaf_id:
            return ()
        return await uow.messages.branch(conversation_id, leaf_id, limit=self._options.history_max_messages)

    async def _continuation(self, uow: UnitOfWork, reply: Message) -> Prompt | None:
        """The prompt that continues `reply` from its stored text: its conversation's history before it, and the
        text itself as the prefix (a closing reply's steer was never stored: it goes on without it)."""
        conversation = await uow.conversations.get(reply.conversation_id)
        if conversation is None:
            return None
        prompt = await self._prompt(uow, conversation, await self._branch(uow, conversation.id, reply.parent_id))
        return dataclasses.replace(prompt, prefix=reply.content)

    async def _prompt(
        self, uow: UnitOfWork, conversation: Conversation, history: Sequence[Message], steer: str = ""
    ) -> Prompt:
        """The prompt for a reply after `history`: the instructions, the newest messages (and the files they carry,
        read by the provider wrapper when the model is called) that fit the token budget, and `steer`."""
        instructions = conversation.system_prompt or self._personas.instructions(conversation.persona)
        system = ChatTurn(Role.SYSTEM, instructions) if instructions else None
        files = await uow.attachments.linked([m.id for m in history if m.role is Role.USER and m.attachment_ids])
        turns = [ChatTurn(m.role, m.content, files.get(m.id, ())) for m in history if _belongs_in_history(m)]
        budget = self._options.history_token_budget - (estimate_tokens(steer) if steer else 0)
        window = history_window(system, turns, budget=budget)
        if steer:  # after the history: the model reads it last, as the instruction for this reply
            window = (*window, ChatTurn(Role.SYSTEM, steer))
        return Prompt(conversation.model, window, self._options.max_reply_tokens, conversation.id)

    async def _follow(
        self, message: Message, offset: int, generation: int = 0
    ) -> AsyncIterator[Delta | Rewind | Ended]:
        """The reply from `offset` to its end: from this replica's buffer while it generates here, else from the
        database. A reader holding text that was never stored (`generation`: the one it read from) is rewound to
        where the stored reply differs: another replica continued it, or this replica lost it."""
        live = self.generations.get(message.id)
        rewind = (live.message if live is not None else message).rewind_for(offset, generation)
        if rewind is None and live is None and message.status.is_final and offset > len(message.content):
            rewind = (len(message.content), message.generation)
        if rewind is not None:
            offset, generation = rewind
            yield Rewind(*rewind)
        if live is not None:
            async for event in read(live.buffer, offset, live.lease.epoch):
                if isinstance(event, Delta):
                    offset, generation = event.offset + len(event.text), event.generation
                yield event
            outcome = live.buffer.outcome
            if outcome is None or not outcome.moved:
                return
            # This replica lost the reply: it was ended or continued elsewhere, and what is stored is what counts.
            message = outcome.message
            rewind = message.rewind_for(offset, generation)
            if rewind is None and message.status.is_final and offset > len(message.content):
                rewind = (len(message.content), message.generation)
            if rewind is not None:
                offset, generation = rewind
                yield Rewind(*rewind)
        events: AsyncIterator[Delta | Rewind | Ended] = (
            _replay(message, offset) if message.status.is_final else self._remote.follow(message, offset, generation)
        )
        async for followed in events:
            yield followed

    async def _owned_message(self, principal: Principal, message_id: str) -> Message:
        """A message the caller may write (regenerate, edit), with the files it carries."""
        message_id = check_id("message_id", message_id)
        async with self._uow() as uow:
            message = await uow.messages.get(message_id)
            await authorize(uow, principal, message, "message", Need.WRITE)
            assert message is not None
            (carrying,) = await with_attachment_ids(uow, [message])
        return carrying

    async def _message_or_none(self, message_id: str) -> Message | None:
        if not message_id:
            return None
        async with self._uow() as uow:
            return await uow.messages.get(message_id)

    async def _reply(self, uow: UnitOfWork, principal: Principal, message_id: str, need: Need) -> Message:
        message = await uow.messages.get(message_id)
        await authorize(uow, principal, message, "message", need)
        assert message is not None
        if message.role is not Role.ASSISTANT:
            raise InvalidArgument.field("message_id", "must name an assistant reply")
        return message


async def _replay(message: Message, offset: int) -> AsyncIterator[Delta | Ended]:
    if offset < len(message.content):
        yield Delta(message.content[offset:], offset, message.generation)
    if message.status is MessageStatus.FAILED:
        raise reply_error(message)  # the same status the live readers got
    yield Ended(message)


async def _stopped(generations: Sequence[Generation]) -> None:
    for generation in generations:
        generation.stop(MessageStatus.CANCELLED)
    for generation in generations:
        await generation.ended()


def _correction_in(existing: Sequence[Message], correction: Message) -> Message:
    """The correction a request made (`existing`, its messages), if it is the same as `correction`."""
    if len(existing) != 1 or existing[0].role is not Role.ASSISTANT:
        raise InvalidArgument.field("request_id", "was already used by another kind of request")
    made = existing[0]
    if (made.conversation_id, made.parent_id, made.content) != (
        correction.conversation_id,
        correction.parent_id,
        correction.content,
    ):
        raise InvalidArgument.field("request_id", "was already used for a different message")
    return made


def _message(
    conversation_id: str,
    principal: Principal,
    role: Role,
    content: str,
    when: datetime,
    request_id: str,
    parent_id: str = "",
) -> Message:
    """A new COMPLETED message (a user message, or a fixed assistant answer)."""
    return Message(
        id=new_id(),
        conversation_id=conversation_id,
        owner=principal.user_id,
        role=role,
        content=content,
        status=MessageStatus.COMPLETED,
        create_time=when,
        update_time=when,
        request_id=request_id,
        parent_id=parent_id,
    )


def _answered(existing: Sequence[Message]) -> bool:
    """Whether a request's messages still hold its reply (it may have been deleted since)."""
    return any(m.role is Role.ASSISTANT for m in existing)


def _belongs_in_history(message: Message) -> bool:
    return bool(message.content) and message.status is not MessageStatus.FAILED
