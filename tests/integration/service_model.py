"""A stateful model of the whole service, driven over a real replica's RPCs: several users, each on a gRPC channel of
their own, creating conversations, sending messages and streaming replies (retries with the same request_id),
resuming, cancelling, deleting conversations and messages, sharing read-only, and coaching over Coach streams — with
clients that give up at random points (a tiny deadline, a stream cancelled after k events) and operations raced
against each other (a conversation deleted while something else uses it).

The model does not predict the service's timing: it learns what happened from what the clients received, and checks
after every step, against the stored rows (read with SQL on a connection of its own) and against every response:
- one user message (and one reply) per request_id: a retry attaches to what the first attempt made, never duplicates;
- no STREAMING row without a live generation holding its lease (given a bounded moment to launch or to end), and
  none at all once the model's replies have finished;
- a reply a client read to its terminal event: the text received is the text stored;
- a terminal state, once seen (by a client or in the rows), never changes;
- a coaching session's stage never goes backwards (nor its turns, nor its end reason);
- a user sees their own conversations and those shared with them, never another's; a deleted conversation leaves
  no rows behind.
Every status a call ends with must be one the situation allows: an INTERNAL (or UNKNOWN) always fails the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc
import sqlalchemy as sa
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from sqlalchemy.ext.asyncio import AsyncEngine

from chat.v1 import chat_pb2 as pb
from chat.v1 import chat_pb2_grpc
from service.storage.tables import coaching_sessions, conversation_shares, conversations, messages
from tests.integration.harness import Replica
from tests.integration.hostile import CLIENT_WRITE_RACE

Code = grpc.StatusCode
CALL_BOUND = 15.0  # seconds: any one client call (or wait for one) that takes longer is a hang
LAUNCH_BOUND = 5.0  # seconds a STREAMING row may go without a live generation (committed, not yet launched)
PERSONA = "english_buddy"
TEXTS = ("hello there", "tell me more", "why is that?", "naïve café 🙂", "and then?")
COACH_TEXTS = ("Yesterday I goed to the shop.", "I have to go now", "yes", "no, one more please")
STAGE_RANK = {"active": 0, "confirming": 0, "wrapping_up": 1, "ended": 2}
FINAL = {"completed", "cancelled", "failed", "interrupted"}
STATUS_NAMES = {
    pb.MESSAGE_STATUS_COMPLETED: "completed",
    pb.MESSAGE_STATUS_STREAMING: "streaming",
    pb.MESSAGE_STATUS_CANCELLED: "cancelled",
    pb.MESSAGE_STATUS_FAILED: "failed",
    pb.MESSAGE_STATUS_INTERRUPTED: "interrupted",
}
PICK = st.integers(min_value=0, max_value=1_000)
T = TypeVar("T")
_examples = itertools.count(1)


def pick(items: list[Any], index: int) -> Any:
    """One of `items` (None when there are none): rules draw indexes, never ids, so that a case replays the same
    whatever ids the service made (no rule has a precondition on what timing decided)."""
    return items[index % len(items)] if items else None


# ---------------------------------------------------------------------------------------------- what clients saw


@dataclass
class Request:
    """A request_id a user sent, and what the service made of it (once a client learned it)."""

    user: str
    conversation_id: str
    content: str  # the text sent; for a regeneration, the message its reply follows
    user_message_id: str = ""
    reply_id: str = ""


@dataclass
class Reading:
    """A reply as one client read it: StreamReply, RegenerateReply, ResumeReply (from `offset`), or SendMessage."""

    kind: str
    user: str
    conversation_id: str
    request_id: str = ""
    offset: int = 0
    allowed: frozenset[Code] = frozenset()
    events: list[pb.ReplyEvent] = field(default_factory=list)
    sent: pb.SendMessageResponse | None = None
    code: Code | None = None
    details: str = ""
    gave_up: bool = False  # the client cancelled it (after k events)
    task: asyncio.Task[None] | None = None


@dataclass
class CoachClient:
    """One open Coach stream."""

    user: str
    session_id: str
    conversation_id: str
    call: Any  # grpc.aio.StreamStreamCall


@dataclass
class Counts:
    """What the runs did, for the test's closing line: examples, steps, client calls, statuses, rules."""

    examples: int = 0
    steps: int = 0
    calls: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    rules: dict[str, int] = field(default_factory=dict)

    def ran(self, rule: str) -> None:
        self.rules[rule] = self.rules.get(rule, 0) + 1

    def saw(self, code: Code) -> None:
        self.statuses[code.name] = self.statuses.get(code.name, 0) + 1


# ---------------------------------------------------------------------------------------------- the stored rows


class Rows:
    """The stored rows, read with SQL on an engine of the test's own (never through the service)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def fetch(self, statement: Any) -> list[Any]:
        async with self.engine.connect() as conn:
            return list(await conn.execute(statement))

    async def messages_of(self, owners: list[str]) -> list[Any]:
        return await self.fetch(messages.select().where(messages.c.owner.in_(owners)))

    async def message(self, message_id: str) -> Any | None:
        found = await self.fetch(messages.select().where(messages.c.id == message_id))
        return found[0] if found else None

    async def conversations_of(self, owners: list[str]) -> list[Any]:
        return await self.fetch(conversations.select().where(conversations.c.owner.in_(owners)))

    async def sessions_of(self, owners: list[str]) -> list[Any]:
        return await self.fetch(coaching_sessions.select().where(coaching_sessions.c.owner.in_(owners)))

    async def shares_to(self, user: str) -> set[str]:
        rows = await self.fetch(
            sa.select(conversation_shares.c.conversation_id).where(conversation_shares.c.user_id == user)
        )
        return {row.conversation_id for row in rows}

    async def left_of(self, conversation_id: str) -> int:
        """Rows anything still keeps of a conversation."""
        total = 0
        for table in (messages, coaching_sessions, conversation_shares):
            column = table.c.conversation_id
            total += len(await self.fetch(sa.select(column).where(column == conversation_id)))
        total += len(await self.fetch(sa.select(conversations.c.id).where(conversations.c.id == conversation_id)))
        return total


def _utc(value: datetime | None) -> datetime | None:
    return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)


# ---------------------------------------------------------------------------------------------- the machine


class ServiceMachine(RuleBasedStateMachine):
    """Rules run their RPCs on the replica's event loop through `run` (bounded in time); background calls stay in
    flight across steps, and what they received is checked when they end."""

    def __init__(
        self,
        replica: Replica,
        rows: Rows,
        run: Callable[[Coroutine[Any, Any, Any]], Any],
        counts: Counts,
    ) -> None:
        super().__init__()
        self.replica = replica
        self.rows = rows
        self.run = run
        self.counts = counts
        example = next(_examples)
        self.users = [f"x{example}-{name}" for name in ("alice", "bob", "carol")]
        self.stubs: dict[str, chat_pb2_grpc.ChatServiceStub] = {}
        self.channels: list[grpc.aio.Channel] = []
        self.auth: dict[str, tuple[tuple[str, str], ...]] = {}
        self.run(self._connect())
        # The model: what exists, as far as the clients know.
        self.conversations: dict[str, str] = {}  # live conversation -> owner
        self.deleted: set[str] = set()
        self.shares: dict[str, set[str]] = {}  # conversation -> viewers
        self.requests: dict[tuple[str, str], Request] = {}
        self.replies: dict[str, str] = {}  # reply id -> conversation (those a client learned of)
        self.user_messages: dict[str, str] = {}  # user message id -> conversation
        self.readings: list[Reading] = []
        self.terminal: dict[str, tuple[str, str]] = {}  # message -> (status, content), once seen final
        self.stages: dict[str, tuple[int, int, str]] = {}  # session -> (stage rank, turns, end reason)
        self.sessions: dict[str, tuple[str, str]] = {}  # session -> (owner, conversation)
        self.coaches: list[CoachClient] = []
        self.pending_gone: list[tuple[str, str]] = []
        self.targets: dict[str, str] = {}  # regeneration request -> the message it regenerates
        counts.examples += 1

    # ------------------------------------------------------------------------------------------ plumbing

    async def _connect(self) -> None:
        for user in self.users:
            channel = grpc.aio.insecure_channel(self.replica.address)
            self.channels.append(channel)
            self.stubs[user] = chat_pb2_grpc.ChatServiceStub(channel)
            self.auth[user] = await self.replica.auth(user)

    def allowed(self, error: grpc.aio.AioRpcError, allowed: frozenset[Code] | set[Code], what: str) -> Code:
        code = error.code()
        self.counts.saw(code)
        assert code in allowed, (
            f"{what} ended {code.name}: {error.details()!r} (allowed: {sorted(c.name for c in allowed)})"
        )
        return code

    def owned(self, user: str) -> list[str]:
        return [c for c, owner in self.conversations.items() if owner == user]

    def seen_final(self, message: pb.Message) -> None:
        """A client saw `message` in a final state: it stays so, with this text, while it exists."""
        status = STATUS_NAMES[message.status]
        assert status in FINAL, f"{message.message_id} reported final as {status}"
        self._terminal(message.message_id, status, message.content, "a client")

    def _terminal(self, message_id: str, status: str, content: str, source: str) -> None:
        before = self.terminal.setdefault(message_id, (status, content))
        assert before == (status, content), (
            f"{source} sees {message_id} as {status} {content!r}; it was seen {before[0]} {before[1]!r}"
        )

    def learned(self, request_id: str, user: str, started: pb.ReplyStarted) -> None:
        """A client learned which messages a request made: a retry must get the same ones, unless they were deleted
        meanwhile (then the retry is a new request)."""
        request = self.requests.get((user, request_id))
        user_id, reply_id = started.user_message.message_id, started.assistant_message.message_id
        self.replies[reply_id] = started.assistant_message.conversation_id
        if user_id:
            self.user_messages[user_id] = started.user_message.conversation_id
        if request is None:
            return
        if request.reply_id and request.reply_id != reply_id:
            self.pending_gone.append((request.reply_id, f"request {request_id} made a second reply {reply_id}"))
        request.user_message_id, request.reply_id = user_id, reply_id

    # ------------------------------------------------------------------------------------------ conversations

    @rule(user=PICK)
    def create_conversation(self, user: int) -> None:
        self.counts.ran("create_conversation")
        self.run(self._create(pick(self.users, user)))

    async def _create(self, user: str) -> None:
        made = await self.stubs[user].CreateConversation(
            pb.CreateConversationRequest(title="chat"), metadata=self.auth[user], timeout=CALL_BOUND
        )
        assert made.conversation.owner_user_id == user
        self.counts.saw(Code.OK)
        self.conversations[made.conversation.conversation_id] = user

    @rule(conversation=PICK, viewer=PICK)
    def share(self, conversation: int, viewer: int) -> None:
        self.counts.ran("share")
        self.run(self._share(self._a_conversation(conversation), pick(self.users, viewer)))

    async def _share(self, target: Awaitable[str], viewer: str) -> None:
        conversation_id = await target
        owner = self.conversations.get(conversation_id, "")
        if not owner or viewer == owner:
            return
        try:
            await self.stubs[owner].ShareConversation(
                pb.ShareConversationRequest(conversation_id=conversation_id, user_id=viewer),
                metadata=self.auth[owner],
                timeout=CALL_BOUND,
            )
        except grpc.aio.AioRpcError as error:
            self.allowed(error, {Code.NOT_FOUND}, "ShareConversation")  # deleted by a racing step
            return
        self.counts.saw(Code.OK)
        self.shares.setdefault(conversation_id, set()).add(viewer)

    @rule(conversation=PICK)
    def delete_conversation(self, conversation: int) -> None:
        self.counts.ran("delete_conversation")
        self.run(self._delete_conversation(self._a_conversation(conversation)))

    async def _delete_conversation(self, target: Awaitable[str]) -> None:
        conversation_id = await target
        owner = self.conversations.get(conversation_id)
        if owner is None:
            return
        try:
            await self.stubs[owner].DeleteConversation(
                pb.DeleteConversationRequest(conversation_id=conversation_id),
                metadata=self.auth[owner],
                timeout=CALL_BOUND,
            )
            self.counts.saw(Code.OK)
        except grpc.aio.AioRpcError as error:
            self.allowed(error, {Code.NOT_FOUND}, "DeleteConversation")  # a racing delete got there first
        self.conversations.pop(conversation_id, None)
        self.shares.pop(conversation_id, None)
        self.deleted.add(conversation_id)

    async def _a_conversation(self, index: int) -> str:
        """A live conversation: one of those there are, or one made now when there is none."""
        found = pick(list(self.conversations), index)
        if found is None:
            await self._create(pick(self.users, index))
            found = list(self.conversations)[-1]
        return str(found)

    async def _a_reply(self, index: int) -> str | None:
        """A reply a client learned of, in a live conversation; or one started now (and left generating), unless
        the conversation is busy."""
        found = pick(self.live(self.replies), index)
        if found is None:
            await self._raced_reply(await self._a_conversation(index), "drop")
            found = pick(self.live(self.replies), index)
        return found

    async def _a_leaf(self, index: int, *, replies_only: bool) -> str | None:
        """The current message of a live conversation, as the rows have it (a reply only, with `replies_only`)."""
        conversation_id = pick(list(self.conversations), index)
        found = await self.rows.fetch(
            sa.select(messages.c.id, messages.c.role)
            .join(conversations, conversations.c.current_message_id == messages.c.id)
            .where(conversations.c.id == conversation_id)
        )
        if not found or (replies_only and found[0].role != "assistant"):
            return None
        known = self.replies if found[0].role == "assistant" else self.user_messages
        known[found[0].id] = conversation_id
        return str(found[0].id)

    async def _a_message(self, index: int) -> str | None:
        """A user message or a reply a client learned of, in a live conversation (one made now if need be)."""
        found = pick(self.live({**self.user_messages, **self.replies}), index)
        return found if found is not None else await self._a_reply(index)

    # ------------------------------------------------------------------------------------------ replies

    @rule(
        conversation=PICK,
        text=PICK,
        retry=st.integers(0, 2),
        writer=st.sampled_from(["owner", "owner", "owner", "viewer"]),
        how=st.sampled_from(["read", "read", "drop", "deadline", "send", "background"]),
        k=st.integers(1, 6),
        deadline_ms=st.integers(1, 40),
    )
    def start_reply(
        self, conversation: int, text: int, retry: int, writer: str, how: str, k: int, deadline_ms: int
    ) -> None:
        self.counts.ran("start_reply")
        self.run(self._start_reply(conversation, text, retry, writer, how, k, deadline_ms))

    async def _start_reply(
        self, conversation: int, text: int, retry: int, writer: str, how: str, k: int, deadline_ms: int
    ) -> None:
        conversation_id = await self._a_conversation(conversation)
        if len(self.pending()) >= 6:
            await self._wait(self.pending()[0])
        user = self.conversations[conversation_id]
        earlier = [
            r
            for (u, r), req in self.requests.items()
            if u == user and req.conversation_id == conversation_id and not r.startswith("regenerate-")
        ]
        if retry == 0 and earlier:  # a retry: the same request again
            request_id = pick(earlier, text)
            content = self.requests[(user, request_id)].content
        else:
            request_id, content = str(uuid.uuid4()), pick(list(TEXTS), text)
            self.requests[(user, request_id)] = Request(user, conversation_id, content)
        allowed = {Code.FAILED_PRECONDITION, Code.NOT_FOUND}  # busy with another reply; deleted by a racing step
        if writer == "viewer" and self.shares.get(conversation_id):
            user, allowed = sorted(self.shares[conversation_id])[0], {Code.PERMISSION_DENIED, Code.NOT_FOUND}
            request_id = str(uuid.uuid4())
            self.requests[(user, request_id)] = Request(user, conversation_id, content)
        if how == "drop":
            allowed.add(Code.CANCELLED)
        if how == "deadline":
            allowed.add(Code.DEADLINE_EXCEEDED)
        reading = Reading(how, user, conversation_id, request_id, allowed=frozenset(allowed))
        timeout = deadline_ms / 1000 if how == "deadline" else CALL_BOUND
        if how in ("send", "background"):
            request = pb.SendMessageRequest(
                conversation_id=conversation_id, content=content, request_id=request_id, background=how == "background"
            )
            call = self.stubs[user].SendMessage(request, metadata=self.auth[user], timeout=timeout)
            reading.task = asyncio.create_task(self._sent(call, reading))
        else:
            stream = pb.StreamReplyRequest(conversation_id=conversation_id, content=content, request_id=request_id)
            call = self.stubs[user].StreamReply(stream, metadata=self.auth[user], timeout=timeout)
            reading.task = asyncio.create_task(self._read(call, reading, k if how == "drop" else None))
        self.readings.append(reading)
        self.counts.calls += 1

    async def _sent(self, call: Any, reading: Reading) -> None:
        try:
            reading.sent = await call
            reading.code = Code.OK
        except grpc.aio.AioRpcError as error:
            reading.code, reading.details = error.code(), error.details() or ""

    async def _read(self, call: Any, reading: Reading, give_up_after: int | None) -> None:
        try:
            while (response := await call.read()) is not grpc.aio.EOF:
                reading.events.append(response.event)
                if give_up_after is not None and len(reading.events) >= give_up_after:
                    call.cancel()
                    reading.gave_up, reading.code = True, Code.CANCELLED
                    return
            reading.code = Code.OK
        except grpc.aio.AioRpcError as error:
            reading.code, reading.details = error.code(), error.details() or ""

    def pending(self) -> list[Reading]:
        return [r for r in self.readings if r.code is None]

    def live(self, messages: dict[str, str]) -> list[str]:
        """The messages (of those a client learned of) whose conversation still exists, in the order learned."""
        return [m for m, c in messages.items() if c in self.conversations]

    @rule(reply=PICK, offset=st.sampled_from([0, 0, 1, 5]), as_viewer=st.booleans(), k=st.integers(0, 4))
    def resume(self, reply: int, offset: int, as_viewer: bool, k: int) -> None:
        self.counts.ran("resume")
        self.run(self._resume(self._a_reply(reply), offset, as_viewer, k))

    async def _resume(self, target: Awaitable[str | None], offset: int, as_viewer: bool, k: int) -> None:
        reply_id = await target
        if reply_id is None:
            return
        conversation_id = self.replies[reply_id]
        user = self.conversations.get(conversation_id)
        if user is None or len(self.pending()) >= 6:
            return
        viewers = sorted(self.shares.get(conversation_id, ()))
        if as_viewer and viewers:
            user = viewers[0]
        stored = await self.rows.message(reply_id)
        offset = min(offset, len(stored.content)) if stored is not None else 0
        allowed = {Code.NOT_FOUND} | ({Code.CANCELLED} if k else set())  # deleted by a racing step
        reading = Reading("resume", user, conversation_id, offset=offset, allowed=frozenset(allowed))
        call = self.stubs[user].ResumeReply(
            pb.ResumeReplyRequest(message_id=reply_id, offset=offset), metadata=self.auth[user], timeout=CALL_BOUND
        )
        reading.task = asyncio.create_task(self._read(call, reading, k or None))
        self.readings.append(reading)
        self.counts.calls += 1

    @rule(message=PICK, retry=st.booleans(), k=st.sampled_from([0, 0, 2]))
    def regenerate(self, message: int, retry: bool, k: int) -> None:
        """RegenerateReply of a message a client knows of (a reply beside it, or one to it), read to its end or given
        up `k` events in; or a retry of an earlier regeneration (it attaches to the reply that one made)."""
        self.counts.ran("regenerate")
        self.run(self._regenerate(message, retry, k))

    async def _regenerate(self, index: int, retry: bool, k: int) -> None:
        earlier = [(u, r) for (u, r), req in self.requests.items() if req.reply_id and r.startswith("regenerate-")]
        earlier = [key for key in earlier if self.requests[key].conversation_id in self.conversations]
        if retry and earlier:
            user, request_id = pick(earlier, index)
            target = self.targets[request_id]
        else:
            found = await self._a_message(index)
            if found is None:
                return
            target, request_id = found, f"regenerate-{uuid.uuid4()}"
        conversation_id = ({**self.user_messages, **self.replies}).get(target, "")
        user = self.conversations.get(conversation_id, "")
        if not user or len(self.pending()) >= 6:
            return
        stored = await self.rows.message(target)
        if stored is None:
            return  # deleted: a regeneration of it is NOT_FOUND, which the deletes' races check already
        parent = stored.parent_id or "" if stored.role == "assistant" else stored.id
        self.targets[request_id] = target
        self.requests.setdefault((user, request_id), Request(user, conversation_id, parent))
        # Busy with another reply; deleted since (the target, or its conversation).
        allowed = {Code.FAILED_PRECONDITION, Code.NOT_FOUND} | ({Code.CANCELLED} if k else set())
        reading = Reading("regenerate", user, conversation_id, request_id, allowed=frozenset(allowed))
        call = self.stubs[user].RegenerateReply(
            pb.RegenerateReplyRequest(message_id=target, request_id=request_id),
            metadata=self.auth[user],
            timeout=CALL_BOUND,
        )
        reading.task = asyncio.create_task(self._read(call, reading, k or None))
        self.readings.append(reading)
        self.counts.calls += 1

    @rule(conversation=PICK, viewer=PICK)
    def unshare(self, conversation: int, viewer: int) -> None:
        """The owner takes a viewer's access back (NOT_FOUND when it was not shared with them)."""
        self.counts.ran("unshare")
        self.run(self._unshare(self._a_conversation(conversation), pick(self.users, viewer)))

    async def _unshare(self, target: Awaitable[str], viewer: str) -> None:
        conversation_id = await target
        owner = self.conversations.get(conversation_id, "")
        if not owner or viewer == owner:
            return
        try:
            await self.stubs[owner].UnshareConversation(
                pb.UnshareConversationRequest(conversation_id=conversation_id, user_id=viewer),
                metadata=self.auth[owner],
                timeout=CALL_BOUND,
            )
        except grpc.aio.AioRpcError as error:
            self.allowed(error, {Code.NOT_FOUND}, "UnshareConversation")
            assert viewer not in self.shares.get(conversation_id, set()), "a viewer's share was not found"
            return
        assert viewer in self.shares.get(conversation_id, set()), "unshared a conversation never shared"
        self.counts.saw(Code.OK)
        self.shares[conversation_id].discard(viewer)

    @rule(reply=PICK, leaf=st.booleans())
    def cancel(self, reply: int, leaf: bool) -> None:
        """Cancel a reply a client knows of, or the newest message of a conversation (a coach's reply perhaps)."""
        self.counts.ran("cancel")
        self.run(self._cancel(self._a_leaf(reply, replies_only=True) if leaf else self._a_reply(reply)))

    async def _cancel(self, target: Awaitable[str | None]) -> None:
        reply_id = await target
        if reply_id is None:
            return
        user = self.conversations.get(self.replies[reply_id])
        if user is None:
            return
        try:
            cancelled = await self.stubs[user].CancelReply(
                pb.CancelReplyRequest(message_id=reply_id), metadata=self.auth[user], timeout=CALL_BOUND
            )
        except grpc.aio.AioRpcError as error:
            # Ended already (not cancelled), or deleted by a racing step.
            self.allowed(error, {Code.FAILED_PRECONDITION, Code.NOT_FOUND}, "CancelReply")
            return
        assert cancelled.message.status == pb.MESSAGE_STATUS_CANCELLED
        self.counts.saw(Code.OK)
        self.seen_final(cancelled.message)

    @rule(message=PICK, leaf=st.booleans())
    def delete_message(self, message: int, leaf: bool) -> None:
        """Delete a message a client knows of, or the newest message of a conversation."""
        self.counts.ran("delete_message")
        self.run(self._delete_message(self._a_leaf(message, replies_only=False) if leaf else self._a_message(message)))

    async def _delete_message(self, target: Awaitable[str | None]) -> None:
        message_id = await target
        if message_id is None:
            return
        conversation_id = self.replies.get(message_id) or self.user_messages[message_id]
        user = self.conversations.get(conversation_id)
        if user is None:
            return
        try:
            deleted = await self.stubs[user].DeleteMessage(
                pb.DeleteMessageRequest(message_id=message_id), metadata=self.auth[user], timeout=CALL_BOUND
            )
        except grpc.aio.AioRpcError as error:
            self.allowed(error, {Code.NOT_FOUND}, "DeleteMessage")  # deleted already (with a parent, or raced)
            return
        assert deleted.deleted_count >= 1
        self.counts.saw(Code.OK)
        assert await self.rows.message(message_id) is None

    @rule(which=PICK)
    def wait_for_one(self, which: int) -> None:
        self.counts.ran("wait_for_one")
        self.run(self._wait(pick(self.pending(), which)))

    async def _wait(self, reading: Reading | None) -> None:
        if reading is None:
            return
        assert reading.task is not None
        await asyncio.wait_for(asyncio.shield(reading.task), CALL_BOUND)

    # ------------------------------------------------------------------------------------------ coaching

    @rule(user=PICK, conversation=PICK, in_new=st.booleans(), max_turns=st.sampled_from([0, 0, 2]))
    def coach_start(self, user: int, conversation: int, in_new: bool, max_turns: int) -> None:
        self.counts.ran("coach_start")
        self.run(self._coach_start(user, conversation, in_new=in_new, max_turns=max_turns))

    async def _coach_start(self, user_index: int, conversation: int, *, in_new: bool, max_turns: int) -> None:
        user = pick(self.users, user_index)
        conversation_id = "" if in_new or not self.owned(user) else pick(self.owned(user), conversation)
        start = pb.CoachStart(persona=PERSONA, conversation_id=conversation_id, max_turns=max_turns)
        await self._coach_open(user, start, {Code.NOT_FOUND})  # the conversation deleted by a racing step

    @rule(session=PICK)
    def coach_rejoin(self, session: int) -> None:
        self.counts.ran("coach_rejoin")
        self.run(self._coach_rejoin(session))

    async def _coach_rejoin(self, index: int) -> None:
        session_id = pick(list(self.sessions), index)
        if session_id is None:
            await self._coach_start(index, index, in_new=False, max_turns=0)
            return
        owner = self.sessions[session_id][0]
        # Ended or deleted sessions refuse a rejoin.
        await self._coach_open(owner, pb.CoachStart(session_id=session_id), {Code.FAILED_PRECONDITION, Code.NOT_FOUND})

    async def _coach_open(self, user: str, start: pb.CoachStart, allowed: set[Code]) -> None:
        if len(self.coaches) >= 4:  # the oldest client goes away without a word
            self.coaches.pop(0).call.cancel()
        call = self.stubs[user].Coach(metadata=self.auth[user], timeout=60)
        self.counts.calls += 1
        try:
            await call.write(pb.CoachRequest(start=start))
            async with asyncio.timeout(CALL_BOUND):
                response = await call.read()
        except grpc.aio.AioRpcError as error:
            self.allowed(error, allowed, "Coach start")
            return
        assert response is not grpc.aio.EOF and response.HasField("session_started"), response
        self.counts.saw(Code.OK)
        session = response.session_started.session
        assert session.persona == PERSONA
        if not start.session_id:
            assert not response.session_started.rejoined
            assert start.conversation_id in ("", session.conversation_id)
            if not start.conversation_id:
                self.conversations[session.conversation_id] = user
            self.sessions[session.session_id] = (user, session.conversation_id)
        self.saw_stage(session.session_id, session.stage, session.turns_used, session.end_reason, "session_started")
        client = CoachClient(user, session.session_id, session.conversation_id, call)
        self.coaches.append(client)
        if session.stage == pb.COACHING_STAGE_WRAPPING_UP:  # a rejoin mid-wrap-up: the stream follows the closing
            await self._coach_ask(_now(client), None, 0)

    def saw_stage(self, session_id: str, stage: int, turns: int, reason: int, source: str) -> None:
        name = pb.CoachingStage.Name(stage).removeprefix("COACHING_STAGE_").lower()
        reason_name = pb.EndReason.Name(reason).removeprefix("END_REASON_").lower()
        self._stage(session_id, STAGE_RANK[name], turns, "" if reason_name == "unspecified" else reason_name, source)

    def _stage(self, session_id: str, rank: int, turns: int, reason: str, source: str) -> None:
        before = self.stages.get(session_id)
        if before is not None:
            assert rank >= before[0], f"{source}: session {session_id} went back from rank {before[0]} to {rank}"
            assert turns >= before[1], f"{source}: session {session_id} turns went from {before[1]} to {turns}"
            assert not before[2] or reason == before[2], f"{source}: end reason {before[2]} became {reason!r}"
        self.stages[session_id] = (rank, turns, reason)

    @rule(coach=PICK, text=PICK, k=st.sampled_from([0, 0, 0, 1, 3]))
    def coach_say(self, coach: int, text: int, k: int) -> None:
        self.counts.ran("coach_say")
        request = pb.CoachRequest(user_turn=pb.CoachUserTurn(text=pick(list(COACH_TEXTS), text)))
        self.run(self._coach_ask(self._a_coach(coach), request, k))

    @rule(coach=PICK)
    def coach_end(self, coach: int) -> None:
        self.counts.ran("coach_end")
        self.run(self._coach_ask(self._a_coach(coach), pb.CoachRequest(end=pb.CoachEnd()), 0))

    async def _a_coach(self, index: int) -> CoachClient | None:
        """An open Coach stream: one of those there are, or one started now (unless its start is refused)."""
        if not self.coaches:
            await self._coach_rejoin(index)
        return pick(self.coaches, index)

    async def _coach_ask(
        self,
        target: Awaitable[CoachClient | None],
        request: pb.CoachRequest | None,
        give_up_after: int,
        *,
        together: bool = False,
    ) -> None:
        """Send one request (None: none) and read its outcome (or, `give_up_after` deltas in, drop the stream). With
        `together` (another stream on the session at the same time), the stages this stream sees are checked in its
        own order: which of the two streams reads its outcome first is not the order the session moved in."""
        client = await target
        if client is None or client not in self.coaches:
            return
        deltas, received = "", 0
        try:
            if request is not None:
                with contextlib.suppress(
                    asyncio.InvalidStateError
                ):  # the server ended the stream (a wrap-up it followed)
                    await client.call.write(request)
            async with asyncio.timeout(CALL_BOUND):
                while True:
                    response = await client.call.read()
                    if response is grpc.aio.EOF:
                        assert await client.call.code() == Code.OK
                        self.coaches.remove(client)
                        return
                    kind = response.WhichOneof("response")
                    if kind == "delta":
                        assert response.delta.offset == len(deltas)
                        deltas += response.delta.text
                        received += 1
                        if received == give_up_after:
                            client.call.cancel()
                            self.coaches.remove(client)
                            return
                        continue
                    break
        except grpc.aio.AioRpcError as error:
            self.coaches.remove(client)
            if (error.code(), error.details()) == CLIENT_WRITE_RACE:
                return  # the server had ended the stream (following a wrap-up) before this client wrote to it
            # Ended, or a racing step deleted the conversation, or its turn was refused while another stream held it.
            self.allowed(error, {Code.FAILED_PRECONDITION, Code.NOT_FOUND}, "Coach")
            return
        self.counts.saw(Code.OK)
        session_id = client.session_id + (f"/{id(client)}" if together else "")
        if kind == "turn_completed":
            done = response.turn_completed
            assert done.message.content == deltas, "the coach reply's text is not the text streamed"
            self.seen_final(done.message)
            self._stage(session_id, 0, done.turns_used, "", "turn_completed")
        elif kind == "wrap_up_confirmation":
            self.seen_final(response.wrap_up_confirmation.message)
            self._stage(session_id, 0, self.stages.get(session_id, (0, 0, ""))[1], "", "wrap_up_confirmation")
        elif kind == "session_ended":
            ended = response.session_ended
            assert ended.summary == ended.message.content
            assert deltas in ("", ended.message.content), "the closing words are not the text streamed"
            self.seen_final(ended.message)
            session = ended.session
            assert session.stage == pb.COACHING_STAGE_ENDED
            self.saw_stage(session_id, session.stage, session.turns_used, session.end_reason, "session_ended")
        else:
            raise AssertionError(f"unexpected Coach response {response}")

    @rule(coach=PICK, text=PICK, other=st.sampled_from(["say", "end"]))
    def coach_together(self, coach: int, text: int, other: str) -> None:
        """Two streams on one session at once (a rejoin while the first stream lingers): a turn on each, or a
        turn and an end."""
        self.counts.ran("coach_together")
        self.run(self._coach_together(coach, text, other))

    async def _coach_together(self, index: int, text: int, other: str) -> None:
        first = await self._a_coach(index)
        if first is None:
            return
        await self._coach_open(
            first.user, pb.CoachStart(session_id=first.session_id), {Code.FAILED_PRECONDITION, Code.NOT_FOUND}
        )
        second = next((c for c in reversed(self.coaches) if c.session_id == first.session_id and c is not first), None)
        if second is None:
            return
        said = pb.CoachRequest(user_turn=pb.CoachUserTurn(text=pick(list(COACH_TEXTS), text)))
        answer = pb.CoachRequest(user_turn=pb.CoachUserTurn(text=pick(list(COACH_TEXTS), text + 1)))
        if other == "end":
            answer = pb.CoachRequest(end=pb.CoachEnd())
        await asyncio.gather(
            self._coach_ask(_now(first), said, 0, together=True),
            self._coach_ask(_now(second), answer, 0, together=True),
        )

    # ------------------------------------------------------------------------------------------ races

    @rule(
        conversation=PICK,
        other=st.sampled_from(["stream", "send", "coach", "coach_say", "share", "delete", "delete_message", "cancel"]),
        delete_first=st.booleans(),
    )
    def race_a_delete(self, conversation: int, other: str, delete_first: bool) -> None:
        self.counts.ran("race_a_delete")
        """Delete a conversation while another request uses it (each may come first)."""
        conversation_id = pick(list(self.conversations), conversation)
        if conversation_id is None:
            return
        owner = self.conversations[conversation_id]
        replies = [r for r, c in self.replies.items() if c == conversation_id]
        coaching = None
        if other == "coach_say":  # a stream on a session in the conversation, open before the race
            start = pb.CoachStart(persona=PERSONA, conversation_id=conversation_id)
            self.run(self._coach_open(owner, start, set()))
            coaching = next((c for c in self.coaches if c.conversation_id == conversation_id), None)
        ops: dict[str, Callable[[], Awaitable[None]]] = {
            "stream": lambda: self._raced_reply(conversation_id, "read"),
            "send": lambda: self._raced_reply(conversation_id, "send"),
            "coach": lambda: self._coach_open(
                owner, pb.CoachStart(persona=PERSONA, conversation_id=conversation_id), {Code.NOT_FOUND}
            ),
            "coach_say": lambda: self._coach_ask(
                _now(coaching), pb.CoachRequest(user_turn=pb.CoachUserTurn(text="hi")), 0
            ),
            "share": lambda: self._share(_now(conversation_id), next(u for u in self.users if u != owner)),
            "delete": lambda: self._delete_conversation(_now(conversation_id)),
            "delete_message": lambda: self._delete_message(_now(replies[0])) if replies else asyncio.sleep(0),
            "cancel": lambda: self._cancel(_now(replies[-1])) if replies else asyncio.sleep(0),
        }

        async def both() -> None:
            first, second = self._delete_conversation(_now(conversation_id)), ops[other]()
            if not delete_first:
                first, second = second, first
            await asyncio.gather(first, second)

        self.run(both())

    async def _raced_reply(self, conversation_id: str, how: str) -> None:
        user = self.conversations.get(conversation_id)
        if user is None:
            return
        request_id = str(uuid.uuid4())
        self.requests[(user, request_id)] = Request(user, conversation_id, TEXTS[0])
        # Busy with another reply, or deleted by a racing step; "drop": the client gives up two events in.
        allowed = {Code.NOT_FOUND, Code.FAILED_PRECONDITION} | ({Code.CANCELLED} if how == "drop" else set())
        reading = Reading(how, user, conversation_id, request_id, allowed=frozenset(allowed))
        stub, metadata = self.stubs[user], self.auth[user]
        if how == "send":
            request = pb.SendMessageRequest(conversation_id=conversation_id, content=TEXTS[0], request_id=request_id)
            await self._sent(stub.SendMessage(request, metadata=metadata, timeout=CALL_BOUND), reading)
        else:
            stream = pb.StreamReplyRequest(conversation_id=conversation_id, content=TEXTS[0], request_id=request_id)
            call = stub.StreamReply(stream, metadata=metadata, timeout=CALL_BOUND)
            await self._read(call, reading, 2 if how == "drop" else None)
        self.counts.calls += 1
        await self._check_reading(reading)

    # ------------------------------------------------------------------------------------------ checks

    async def harvest(self) -> None:
        """Check the calls that ended: their status is one the situation allows, what they read is consistent."""
        for reading in [r for r in self.readings if r.code is not None]:
            self.readings.remove(reading)
            await self._check_reading(reading)

    async def _check_reading(self, reading: Reading) -> None:
        assert reading.code is not None
        what = f"{reading.kind} ({reading.details!r})"
        if reading.code is not Code.OK:
            self.counts.saw(reading.code)
            assert reading.code in reading.allowed, f"{what} ended {reading.code.name}"
        if reading.sent is not None:
            sent = reading.sent
            self.counts.saw(Code.OK)
            assert sent.user_message.content == self.requests[(reading.user, reading.request_id)].content
            self.learned(
                reading.request_id,
                reading.user,
                pb.ReplyStarted(user_message=sent.user_message, assistant_message=sent.message),
            )
            if reading.kind == "send":
                self.seen_final(sent.message)
            return
        events = reading.events
        if not events:
            return
        assert events[0].HasField("started"), events[0]
        started = events[0].started
        if reading.kind == "regenerate":  # the message answered, stored before; the new reply under it
            assert (
                started.assistant_message.parent_message_id == self.requests[(reading.user, reading.request_id)].content
            )
            self.learned(reading.request_id, reading.user, started)
        elif reading.kind != "resume":
            assert started.user_message.content == self.requests[(reading.user, reading.request_id)].content
            self.learned(reading.request_id, reading.user, started)
        text, offset = "", reading.offset
        for event in events[1:]:
            kind = event.WhichOneof("event")
            if kind == "delta":
                assert event.delta.offset == offset + len(text), f"{what}: a gap or overlap at {event.delta.offset}"
                text += event.delta.text
            elif kind == "rewind":
                text = text[: max(0, event.rewind.offset - offset)]
            else:
                assert kind == "completed" and event is events[-1], f"{what}: {kind} before the end"
        last = events[-1]
        if last.HasField("completed"):
            self.counts.saw(Code.OK)
            final = last.completed.message
            assert final.content[reading.offset :] == text, f"{what}: received {text!r}, final {final.content!r}"
            self.seen_final(final)
        else:
            assert reading.code is not Code.OK, f"{what}: the stream ended without its terminal event"

    async def check(self) -> None:
        """Every invariant, against the stored rows and what the clients received."""
        self.pending_gone = []
        await self.harvest()
        rows = await self.rows.messages_of(self.users)
        by_id = {row.id: row for row in rows}
        # One user message (and one reply) per request_id.
        made: dict[tuple[str, str, str], int] = {}
        for row in rows:
            if row.request_id:
                key = (row.owner, row.request_id, row.role)
                made[key] = made.get(key, 0) + 1
        assert all(n == 1 for n in made.values()), {k: n for k, n in made.items() if n > 1}
        for gone, why in self.pending_gone:
            assert gone not in by_id, why  # a retry made a second reply while the first still exists
        # Terminal states never change; a reply read to its end holds the text received.
        for row in rows:
            if row.status in FINAL:
                self._terminal(row.id, row.status, row.content, "the rows")
        for message_id, (status, content) in self.terminal.items():
            row = by_id.get(message_id)
            assert row is None or (row.status, row.content) == (status, content), (
                f"{message_id} was seen {status} {content!r}; stored {row.status} {row.content!r}"
            )
        # No STREAMING row without a live generation holding its lease.
        await self._streaming_is_live([row for row in rows if row.status == "streaming"])
        await self._sessions_move_forward()
        await self._visibility()
        for conversation_id in self.deleted:
            assert await self.rows.left_of(conversation_id) == 0, f"rows of deleted {conversation_id} remain"

    async def _streaming_is_live(self, streaming: list[Any]) -> None:
        generations = self.replica.app.deps.use_cases.replies.generations
        loop = asyncio.get_running_loop()
        for row in streaming:
            deadline = loop.time() + LAUNCH_BOUND
            while True:
                live = generations.get(row.id)
                now = datetime.now(UTC)
                current = await self.rows.message(row.id)
                if current is None or current.status != "streaming":
                    break  # ended (or deleted) meanwhile
                if live is not None and live.lease.epoch == current.lease_epoch:
                    expires = _utc(current.lease_expires_at)
                    assert current.lease_owner == live.lease.owner and expires is not None and expires > now, (
                        f"reply {row.id} generates under a lease that is not stored"
                    )
                    break
                assert loop.time() < deadline, f"reply {row.id} is STREAMING with nothing generating it"
                await asyncio.sleep(0.02)

    async def _sessions_move_forward(self) -> None:
        for row in await self.rows.sessions_of(self.users):
            assert row.stage in STAGE_RANK, row
            assert (row.stage == "ended") <= bool(row.end_reason), f"session {row.id} ended without a reason"
            self._stage(row.id, STAGE_RANK[row.stage], row.turns_used, row.end_reason, "the rows")
            assert row.conversation_id not in self.deleted

    async def _visibility(self) -> None:
        stored = await self.rows.conversations_of(self.users)
        assert {row.id: row.owner for row in stored} == self.conversations
        for user in self.users:
            listed = await self.stubs[user].ListConversations(
                pb.ListConversationsRequest(page_size=1000, scope=pb.CONVERSATION_SCOPE_ALL),
                metadata=self.auth[user],
                timeout=CALL_BOUND,
            )
            seen = {c.conversation_id: c.owner_user_id for c in listed.conversations}
            shared = {c for c, viewers in self.shares.items() if user in viewers}
            assert await self.rows.shares_to(user) == shared
            assert seen == {c: o for c, o in self.conversations.items() if o == user or c in shared}
            others = [c for c, o in self.conversations.items() if o != user]
            for conversation_id in others[:1]:
                code = await self._code_of(
                    self.stubs[user].GetConversation(
                        pb.GetConversationRequest(conversation_id=conversation_id),
                        metadata=self.auth[user],
                        timeout=CALL_BOUND,
                    )
                )
                expected = Code.OK if conversation_id in shared else Code.PERMISSION_DENIED
                assert code == expected, f"{user} reading another user's conversation: {code.name}"

    @staticmethod
    async def _code_of(call: Awaitable[Any]) -> Code:
        try:
            await call
        except grpc.aio.AioRpcError as error:
            return error.code()
        return Code.OK

    @invariant()
    def consistent(self) -> None:
        self.counts.steps += 1
        self.run(self.check())

    async def settle(self) -> None:
        """Every client call ended, every reply finished: then no row is STREAMING."""
        for client in list(self.coaches):
            client.call.cancel()
        self.coaches.clear()
        tasks = [r.task for r in self.readings if r.task is not None]
        if tasks:
            await asyncio.wait_for(asyncio.gather(*tasks), CALL_BOUND)
        generations = self.replica.app.deps.use_cases.replies.generations
        async with asyncio.timeout(CALL_BOUND):
            while True:  # a Coach stream cancelled just now may still be starting a reply: its row shows it
                live = [g for c in [*self.conversations, *self.deleted] for g in generations.in_conversation(c)]
                if live:
                    await asyncio.gather(*(g.ended() for g in live))
                    continue
                streaming = [row for row in await self.rows.messages_of(self.users) if row.status == "streaming"]
                if not streaming:
                    break
                await self._streaming_is_live(streaming)  # each ends, or its generation shows, within a bound
        await self.check()

    def teardown(self) -> None:
        try:
            self.run(self.settle())
        finally:
            self.run(_close(self.channels))


async def _now(value: T) -> T:
    return value


async def _close(channels: list[grpc.aio.Channel]) -> None:
    for channel in channels:
        await channel.close()
