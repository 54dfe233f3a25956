"""A small blocking wrapper: the asyncio ChatClient runs on an event loop in a background thread.

Streams come back as iterators. Interrupting one (Ctrl-C) leaves it usable: the pending read keeps going,
and the next `next()` picks it up, so a caller can cancel the reply and still read its final event."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from concurrent.futures import Future
from types import TracebackType
from typing import Any, Self, TypeVar

from chat.v1 import chat_pb2 as pb
from chat_client.client import ChatClient
from chat_client.coaching import CoachSession
from chat_client.replies import ReplyStream

T = TypeVar("T")
_END: Any = object()


class SyncIterator(Iterator[T]):
    def __init__(self, runner: _Loop, source: AsyncIterator[T]) -> None:
        self._runner = runner
        self._source = source
        self._pending: Future[T] | None = None

    def __next__(self) -> T:
        if self._pending is None:
            self._pending = self._runner.submit(self._next())
        pending = self._pending
        try:
            item = pending.result()
        finally:
            if pending.done():
                self._pending = None
        if item is _END:
            raise StopIteration
        return item

    def ready(self) -> bool:
        """Whether the next item (or the end, or an error) has arrived, so that `next()` will not wait. Starts
        reading it in the background if no read is under way."""
        if self._pending is None:
            self._pending = self._runner.submit(self._next())
        return self._pending.done()

    async def _next(self) -> T:
        # A coroutine may not raise StopIteration: the end travels as a sentinel.
        return await anext(self._source, _END)

    def close(self) -> None:
        closer = getattr(self._source, "aclose", None)
        if closer is not None:
            self._runner.run(closer())


class SyncReplyStream(SyncIterator[pb.ReplyEvent]):
    """A ReplyStream, blocking: iterate for events; `stream` holds the progress (text, message, ids)."""

    def __init__(self, runner: _Loop, stream: ReplyStream) -> None:
        super().__init__(runner, aiter(stream))
        self.stream = stream

    def cancel(self) -> None:
        self._runner.run(self.stream.cancel())

    def result(self) -> pb.Message:
        for _ in self:
            pass
        assert self.stream.message is not None
        return self.stream.message


class SyncCoachSession(SyncIterator[Any]):
    """A CoachSession, blocking: iterate for CoachResponses; `say` and `end` send (False: the server had already
    finished the stream; read on for its ending)."""

    def __init__(self, runner: _Loop, session: CoachSession) -> None:
        super().__init__(runner, aiter(session))
        self.session = session

    def say(self, text: str) -> bool:
        return self._runner.run(self.session.say(text))

    def end(self) -> bool:
        return self._runner.run(self.session.end())

    def cancel(self) -> None:
        self._runner.run(self.session.close())


class _Loop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="chat-client", daemon=True)
        self._thread.start()

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.submit(coroutine).result()

    def stop(self) -> None:
        self.run(self._settle())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()

    async def _settle(self) -> None:
        """End what still runs on the loop, as asyncio.run does before it closes one: grpc's own tasks for
        calls that were cancelled or broken (a resumed reply stream leaves one) would otherwise be destroyed
        pending, and say so on stderr."""
        current = asyncio.current_task()
        pending = [task for task in asyncio.all_tasks() if task is not current]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await self.loop.shutdown_asyncgens()


class SyncChatClient:
    """ChatClient's methods, blocking. Takes the same arguments as ChatClient."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._runner = _Loop()

        async def build() -> ChatClient:  # the channel must be created on the loop that will use it
            return ChatClient(*args, **kwargs)

        self.client = self._runner.run(build())

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._runner.run(self.client.close())
        self._runner.stop()

    def create_conversation(self, **fields: str) -> pb.Conversation:
        return self._runner.run(self.client.create_conversation(**fields))

    def get_conversation(self, conversation_id: str) -> pb.Conversation:
        return self._runner.run(self.client.get_conversation(conversation_id))

    def list_conversations(self, **kwargs: Any) -> pb.ListConversationsResponse:
        return self._runner.run(self.client.list_conversations(**kwargs))

    def iter_conversations(self, **kwargs: Any) -> SyncIterator[pb.Conversation]:
        return SyncIterator(self._runner, self.client.iter_conversations(**kwargs))

    def update_conversation(self, conversation_id: str, **fields: str | None) -> pb.Conversation:
        return self._runner.run(self.client.update_conversation(conversation_id, **fields))

    def delete_conversation(self, conversation_id: str) -> None:
        self._runner.run(self.client.delete_conversation(conversation_id))

    def list_messages(self, conversation_id: str, **kwargs: Any) -> pb.ListMessagesResponse:
        return self._runner.run(self.client.list_messages(conversation_id, **kwargs))

    def iter_messages(self, conversation_id: str, **kwargs: Any) -> SyncIterator[pb.Message]:
        return SyncIterator(self._runner, self.client.iter_messages(conversation_id, **kwargs))

    def send_message(self, conversation_id: str, content: str, **kwargs: Any) -> pb.SendMessageResponse:
        return self._runner.run(self.client.send_message(conversation_id, content, **kwargs))

    def stream_reply(self, conversation_id: str, content: str, **kwargs: Any) -> SyncReplyStream:
        return SyncReplyStream(self._runner, self.client.stream_reply(conversation_id, content, **kwargs))

    def resume_reply(self, message_id: str, offset: int = 0) -> SyncReplyStream:
        return SyncReplyStream(self._runner, self.client.resume_reply(message_id, offset))

    def regenerate_reply(self, message_id: str, **kwargs: Any) -> SyncReplyStream:
        return SyncReplyStream(self._runner, self.client.regenerate_reply(message_id, **kwargs))

    def edit_message(self, message_id: str, content: str, **kwargs: Any) -> SyncReplyStream:
        return SyncReplyStream(self._runner, self.client.edit_message(message_id, content, **kwargs))

    def set_current_branch(self, conversation_id: str, message_id: str) -> pb.Conversation:
        return self._runner.run(self.client.set_current_branch(conversation_id, message_id))

    def list_siblings(self, message_id: str, **kwargs: Any) -> pb.ListSiblingsResponse:
        return self._runner.run(self.client.list_siblings(message_id, **kwargs))

    def iter_siblings(self, message_id: str, **kwargs: Any) -> SyncIterator[pb.Message]:
        return SyncIterator(self._runner, self.client.iter_siblings(message_id, **kwargs))

    def delete_message(self, message_id: str) -> pb.DeleteMessageResponse:
        return self._runner.run(self.client.delete_message(message_id))

    def cancel_reply(self, message_id: str) -> pb.Message:
        return self._runner.run(self.client.cancel_reply(message_id))

    def search_messages(self, query: str, **kwargs: Any) -> pb.SearchMessagesResponse:
        return self._runner.run(self.client.search_messages(query, **kwargs))

    def export_conversation(self, conversation_id: str, fmt: str = "markdown", **kwargs: Any) -> SyncIterator[bytes]:
        return SyncIterator(self._runner, self.client.export_conversation(conversation_id, fmt, **kwargs))

    def upload_attachment(self, source: Any, **kwargs: str) -> pb.Attachment:
        return self._runner.run(self.client.upload_attachment(source, **kwargs))

    def get_attachment(self, attachment_id: str) -> pb.Attachment:
        return self._runner.run(self.client.get_attachment(attachment_id))

    def download_attachment(self, attachment_id: str) -> bytes:
        return self._runner.run(self.client.download_attachment(attachment_id))

    def delete_attachment(self, attachment_id: str) -> None:
        self._runner.run(self.client.delete_attachment(attachment_id))

    def share_conversation(self, conversation_id: str, user_id: str) -> pb.ConversationShare:
        return self._runner.run(self.client.share_conversation(conversation_id, user_id))

    def unshare_conversation(self, conversation_id: str, user_id: str) -> None:
        self._runner.run(self.client.unshare_conversation(conversation_id, user_id))

    def list_conversation_shares(self, conversation_id: str, **kwargs: Any) -> pb.ListConversationSharesResponse:
        return self._runner.run(self.client.list_conversation_shares(conversation_id, **kwargs))

    def iter_conversation_shares(self, conversation_id: str) -> SyncIterator[pb.ConversationShare]:
        return SyncIterator(self._runner, self.client.iter_conversation_shares(conversation_id))

    def list_models(self, **kwargs: Any) -> pb.ListModelsResponse:
        return self._runner.run(self.client.list_models(**kwargs))

    def list_personas(self, **kwargs: Any) -> Any:
        return self._runner.run(self.client.list_personas(**kwargs))

    def coach(self, persona: str, **kwargs: Any) -> SyncCoachSession:
        return SyncCoachSession(self._runner, self._runner.run(self.client.coach(persona, **kwargs)))

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run any coroutine (e.g. one using `self.client.coach(...)`) on the client's loop."""
        return self._runner.run(coroutine)
