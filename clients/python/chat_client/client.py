"""ChatClient: typed asyncio methods over the generated ChatService stubs, with auth, TLS, default deadlines,
retries with backoff for idempotent calls, resumable reply streams and typed errors."""

from __future__ import annotations

import asyncio
import mimetypes
import os
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import grpc
from google.protobuf import field_mask_pb2

from chat.v1 import chat_pb2 as pb
from chat.v1 import chat_pb2_grpc
from chat_client.coaching import CoachSession, open_coach_session
from chat_client.errors import ChatError, Unimplemented, from_rpc_error
from chat_client.replies import ReplyStream
from chat_client.retry import RetryPolicy, retryable

DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_TIMEOUT = 30.0
# SendMessage waits for a whole reply; a slow local model may take minutes.
DEFAULT_REPLY_TIMEOUT = 600.0

# The longest a connection attempt (TCP, TLS, the server's HTTP/2 SETTINGS) may take: room for a distant or
# busy server, yet a silent address fails in seconds, not gRPC's default 20.
CONNECT_TIMEOUT_MS = 5000

# gRPC's default reconnect backoff starts at 1 s after a failed connection attempt; calls made meanwhile fail
# at once. Our own retries space themselves out, so the channel may try again sooner. gRPC reads
# `min_reconnect_backoff_ms` as the connect timeout (its "min connect timeout"), not as a backoff: at 100 ms it
# failed every connection slower than that to set up, and a Coach stream, which is never retried, with it.
CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.min_reconnect_backoff_ms", CONNECT_TIMEOUT_MS),
)

EXPORT_FORMATS = {
    "markdown": pb.EXPORT_FORMAT_MARKDOWN,
    "json": pb.EXPORT_FORMAT_JSON,
    "csv": pb.EXPORT_FORMAT_CSV,
}
# Which conversations a listing or search covers.
SCOPES = {
    "owned": pb.CONVERSATION_SCOPE_OWNED,
    "shared": pb.CONVERSATION_SCOPE_SHARED,
    "all": pb.CONVERSATION_SCOPE_ALL,
}
# Upload chunks: well under the server's 4 MiB message limit, and few messages (each counts against the rate).
UPLOAD_CHUNK_BYTES = 1024 * 1024


class ChatClient:
    """An asyncio client for one chat-service address. Use as `async with ChatClient(...) as client:`.

    `api_key` or `jwt` is sent as `authorization: Bearer ...`. `tls=True` uses the system roots, or
    `root_certificates` (PEM). `timeout` is the default deadline of unary calls (seconds; None: none).
    Calls that are safe to repeat are retried on UNAVAILABLE as `retry` says, unless the server reports its model
    provider down (ModelUnavailable); StreamReply and SendMessage carry a `request_id` (generated when not
    given), so their retries never add a second message.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        api_key: str | None = None,
        jwt: str | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        stream_timeout: float | None = None,
        retry: RetryPolicy | None = None,
        options: Sequence[tuple[str, Any]] = (),
        stub: Any = None,
    ) -> None:
        token = api_key or jwt
        self._metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        self.address = address
        self.timeout = timeout
        self.stream_timeout = stream_timeout
        self.retry = retry or RetryPolicy()
        self._channel: grpc.aio.Channel | None = None
        options = [*CHANNEL_OPTIONS, *options]
        if stub is None:
            if tls:
                credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
                self._channel = grpc.aio.secure_channel(address, credentials, options=options)
            else:
                self._channel = grpc.aio.insecure_channel(address, options=options)
            stub = chat_pb2_grpc.ChatServiceStub(self._channel)
        self._stub = stub

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    # ------------------------------------------------------------------------------------ conversations

    async def create_conversation(
        self, *, title: str = "", model: str = "", system_prompt: str = "", persona: str = ""
    ) -> pb.Conversation:
        request = pb.CreateConversationRequest(title=title, model=model, system_prompt=system_prompt, persona=persona)
        # Not retried: without a request id a retry could create a second conversation.
        response = await self._unary("CreateConversation", request, idempotent=False)
        return response.conversation  # type: ignore[no-any-return]

    async def get_conversation(self, conversation_id: str) -> pb.Conversation:
        response = await self._unary("GetConversation", pb.GetConversationRequest(conversation_id=conversation_id))
        return response.conversation  # type: ignore[no-any-return]

    async def list_conversations(
        self, *, page_size: int = 0, page_token: str = "", scope: str = "owned"
    ) -> pb.ListConversationsResponse:
        """The caller's conversations (`scope` "owned"), those shared with the caller ("shared"), or both ("all")."""
        request = pb.ListConversationsRequest(page_size=page_size, page_token=page_token, scope=SCOPES[scope])
        return await self._unary("ListConversations", request)  # type: ignore[no-any-return]

    async def iter_conversations(self, *, page_size: int = 0, scope: str = "owned") -> AsyncIterator[pb.Conversation]:
        """Every conversation in `scope` (see list_conversations), newest first, page by page."""
        token = ""
        while True:
            page = await self.list_conversations(page_size=page_size, page_token=token, scope=scope)
            for conversation in page.conversations:
                yield conversation
            token = page.next_page_token
            if not token:
                return

    async def update_conversation(
        self,
        conversation_id: str,
        *,
        title: str | None = None,
        model: str | None = None,
        persona: str | None = None,
        system_prompt: str | None = None,
    ) -> pb.Conversation:
        """Update the fields given (None leaves a field alone; "" resets it)."""
        fields = {"title": title, "model": model, "persona": persona, "system_prompt": system_prompt}
        changes: dict[str, Any] = {name: value for name, value in fields.items() if value is not None}
        request = pb.UpdateConversationRequest(
            conversation=pb.Conversation(conversation_id=conversation_id, **changes),
            update_mask=field_mask_pb2.FieldMask(paths=sorted(changes)),
        )
        response = await self._unary("UpdateConversation", request)
        return response.conversation  # type: ignore[no-any-return]

    async def delete_conversation(self, conversation_id: str) -> None:
        await self._unary(
            "DeleteConversation", pb.DeleteConversationRequest(conversation_id=conversation_id), idempotent=False
        )

    # ------------------------------------------------------------------------------------------ messages

    async def list_messages(
        self, conversation_id: str, *, page_size: int = 0, page_token: str = "", branch_message_id: str = ""
    ) -> pb.ListMessagesResponse:
        """A page of the conversation's current branch (or of the branch through `branch_message_id`)."""
        request = pb.ListMessagesRequest(
            conversation_id=conversation_id,
            page_size=page_size,
            page_token=page_token,
            branch_message_id=branch_message_id,
        )
        return await self._unary("ListMessages", request)  # type: ignore[no-any-return]

    async def iter_messages(
        self, conversation_id: str, *, page_size: int = 0, branch_message_id: str = ""
    ) -> AsyncIterator[pb.Message]:
        """Every message of the conversation's current branch (or of the branch through `branch_message_id`),
        oldest first, page by page."""
        token = ""
        while True:
            page = await self.list_messages(
                conversation_id, page_size=page_size, page_token=token, branch_message_id=branch_message_id
            )
            for message in page.messages:
                yield message
            token = page.next_page_token
            if not token:
                return

    async def send_message(
        self,
        conversation_id: str,
        content: str,
        *,
        request_id: str = "",
        background: bool = False,
        attachment_ids: Sequence[str] = (),
    ) -> pb.SendMessageResponse:
        """Send user text (carrying the uploaded files `attachment_ids`); the response holds the completed reply (or
        the STREAMING one with `background`)."""
        request = pb.SendMessageRequest(
            conversation_id=conversation_id,
            content=content,
            request_id=request_id or str(uuid.uuid4()),
            background=background,
            attachment_ids=attachment_ids,
        )
        deadline = self.timeout if background else max(self.timeout or 0, DEFAULT_REPLY_TIMEOUT)
        return await self._unary("SendMessage", request, deadline=deadline)  # type: ignore[no-any-return]

    def stream_reply(
        self, conversation_id: str, content: str, *, request_id: str = "", attachment_ids: Sequence[str] = ()
    ) -> ReplyStream:
        """Send user text (carrying the uploaded files `attachment_ids`) and iterate over the reply's events as they
        are generated (see ReplyStream)."""
        request = pb.StreamReplyRequest(
            conversation_id=conversation_id,
            content=content,
            request_id=request_id or str(uuid.uuid4()),
            attachment_ids=attachment_ids,
        )
        return self._reply_stream(request=request)

    def resume_reply(self, message_id: str, offset: int = 0) -> ReplyStream:
        """Catch up on a reply from `offset` (code points), then follow it live to its end."""
        return self._reply_stream(message_id=message_id, offset=offset)

    # ------------------------------------------------------------------------------------------ the tree

    def regenerate_reply(self, message_id: str, *, request_id: str = "") -> ReplyStream:
        """A new reply beside the reply `message_id` (or to the user message `message_id`), streamed like
        `stream_reply`; it becomes the current branch."""
        request = pb.RegenerateReplyRequest(message_id=message_id, request_id=request_id or str(uuid.uuid4()))
        return self._reply_stream(request=request, method="RegenerateReply")

    def edit_message(self, message_id: str, content: str, *, request_id: str = "") -> ReplyStream:
        """Edit a message as a new sibling that becomes the current branch. A user message's edit streams its reply;
        an assistant message's is a correction (the stream's message, COMPLETED, with no `model`)."""
        request = pb.EditMessageRequest(
            message_id=message_id, content=content, request_id=request_id or str(uuid.uuid4())
        )
        return self._reply_stream(request=request, method="EditMessage")

    async def set_current_branch(self, conversation_id: str, message_id: str) -> pb.Conversation:
        """Make the branch through `message_id` current (it ends at the newest message under it)."""
        request = pb.SetCurrentBranchRequest(conversation_id=conversation_id, message_id=message_id)
        response = await self._unary("SetCurrentBranch", request)
        return response.conversation  # type: ignore[no-any-return]

    async def list_siblings(
        self, message_id: str, *, page_size: int = 0, page_token: str = ""
    ) -> pb.ListSiblingsResponse:
        """A page of `message_id` and the messages sharing its parent, oldest first."""
        request = pb.ListSiblingsRequest(message_id=message_id, page_size=page_size, page_token=page_token)
        return await self._unary("ListSiblings", request)  # type: ignore[no-any-return]

    async def iter_siblings(self, message_id: str, *, page_size: int = 0) -> AsyncIterator[pb.Message]:
        """`message_id` and every message sharing its parent, oldest first."""
        token = ""
        while True:
            page = await self.list_siblings(message_id, page_size=page_size, page_token=token)
            for message in page.messages:
                yield message
            token = page.next_page_token
            if not token:
                return

    async def delete_message(self, message_id: str) -> pb.DeleteMessageResponse:
        """Delete a message and every message under it (a reply generating among them is cancelled first)."""
        # Not retried: a retry of a deletion that went through is NOT_FOUND.
        return await self._unary(  # type: ignore[no-any-return]
            "DeleteMessage", pb.DeleteMessageRequest(message_id=message_id), idempotent=False
        )

    async def cancel_reply(self, message_id: str) -> pb.Message:
        response = await self._unary("CancelReply", pb.CancelReplyRequest(message_id=message_id))
        return response.message  # type: ignore[no-any-return]

    async def search_messages(
        self, query: str, *, page_size: int = 0, page_token: str = "", scope: str = "owned"
    ) -> pb.SearchMessagesResponse:
        """Full-text search, best match first (snippets mark matches with `**`), over the caller's conversations
        (`scope` "owned"), those shared with the caller ("shared"), or both ("all")."""
        request = pb.SearchMessagesRequest(query=query, page_size=page_size, page_token=page_token, scope=SCOPES[scope])
        return await self._unary("SearchMessages", request)  # type: ignore[no-any-return]

    async def export_conversation(
        self,
        conversation_id: str,
        fmt: str = "markdown",
        *,
        first_index: int = 0,
        omit_header: bool = False,
        branch_message_id: str = "",
    ) -> AsyncIterator[bytes]:
        """The conversation's current branch (or the branch through `branch_message_id`) as a file in `fmt`
        (markdown, json or csv), chunk by chunk."""
        request = pb.ExportConversationRequest(
            conversation_id=conversation_id,
            format=EXPORT_FORMATS[fmt],
            first_index=first_index,
            omit_header=omit_header,
            branch_message_id=branch_message_id,
        )
        received = False

        def restartable(error: BaseException) -> bool:  # only before the caller has seen any bytes
            return not received and isinstance(error, ChatError) and retryable(error)

        async for attempt in self.retry.retrying(restartable):
            with attempt:
                try:
                    call = self._stub.ExportConversation(request, metadata=self._metadata, timeout=self.stream_timeout)
                    async for chunk in call:
                        received = True
                        yield chunk.data
                except grpc.RpcError as error:
                    raise from_rpc_error(error) from error

    # ------------------------------------------------------------------------------- attachments

    async def upload_attachment(
        self, source: bytes | str | os.PathLike[str], *, filename: str = "", content_type: str = ""
    ) -> pb.Attachment:
        """Upload a file (its path, or its bytes with a `filename`) to attach to messages. The content type is
        guessed from the file name when not given (the server sniffs the bytes either way). Not retried: a retry
        would store a second copy."""
        if isinstance(source, bytes):
            data = source
        else:
            path = Path(source)
            data, filename = await asyncio.to_thread(path.read_bytes), filename or path.name
        content_type = content_type or mimetypes.guess_type(filename)[0] or ""
        metadata = pb.AttachmentMetadata(filename=filename, content_type=content_type, size_bytes=len(data))
        messages = [pb.UploadAttachmentRequest(metadata=metadata)] + [
            pb.UploadAttachmentRequest(data=data[start : start + UPLOAD_CHUNK_BYTES])
            for start in range(0, len(data), UPLOAD_CHUNK_BYTES)
        ]
        response = await self._unary("UploadAttachment", iter(messages), idempotent=False)
        return response.attachment  # type: ignore[no-any-return]

    async def get_attachment(self, attachment_id: str) -> pb.Attachment:
        response = await self._unary("GetAttachment", pb.GetAttachmentRequest(attachment_id=attachment_id))
        return response.attachment  # type: ignore[no-any-return]

    async def download_attachment(self, attachment_id: str) -> bytes:
        """An attachment's bytes (the owner's, or a viewer's of a conversation that carries it)."""
        request = pb.DownloadAttachmentRequest(attachment_id=attachment_id)

        def restartable(error: BaseException) -> bool:  # the bytes are joined before any is returned: always
            return isinstance(error, ChatError) and retryable(error)

        async for attempt in self.retry.retrying(restartable):
            with attempt:
                try:
                    call = self._stub.DownloadAttachment(request, metadata=self._metadata, timeout=self.stream_timeout)
                    return b"".join([chunk.data async for chunk in call])
                except grpc.RpcError as error:
                    raise from_rpc_error(error) from error
        raise AssertionError("unreachable: retrying raises when it gives up")

    async def delete_attachment(self, attachment_id: str) -> None:
        request = pb.DeleteAttachmentRequest(attachment_id=attachment_id)
        await self._unary("DeleteAttachment", request, idempotent=False)

    # ------------------------------------------------------------------------------------------ sharing

    async def share_conversation(self, conversation_id: str, user_id: str) -> pb.ConversationShare:
        """Let `user_id` read one of the caller's conversations (role viewer); sharing again changes nothing."""
        request = pb.ShareConversationRequest(conversation_id=conversation_id, user_id=user_id)
        response = await self._unary("ShareConversation", request)
        return response.share  # type: ignore[no-any-return]

    async def unshare_conversation(self, conversation_id: str, user_id: str) -> None:
        """Take `user_id`'s access back (NotFound when the conversation is not shared with them)."""
        request = pb.UnshareConversationRequest(conversation_id=conversation_id, user_id=user_id)
        await self._unary("UnshareConversation", request, idempotent=False)

    async def list_conversation_shares(
        self, conversation_id: str, *, page_size: int = 0, page_token: str = ""
    ) -> pb.ListConversationSharesResponse:
        request = pb.ListConversationSharesRequest(
            conversation_id=conversation_id, page_size=page_size, page_token=page_token
        )
        return await self._unary("ListConversationShares", request)  # type: ignore[no-any-return]

    async def iter_conversation_shares(self, conversation_id: str) -> AsyncIterator[pb.ConversationShare]:
        """Everyone a conversation of the caller's is shared with, by user id, page by page."""
        token = ""
        while True:
            page = await self.list_conversation_shares(conversation_id, page_token=token)
            for share in page.shares:
                yield share
            token = page.next_page_token
            if not token:
                return

    # ------------------------------------------------------------------------------- models, coaching

    async def list_models(self, *, page_size: int = 0, page_token: str = "") -> pb.ListModelsResponse:
        request = pb.ListModelsRequest(page_size=page_size, page_token=page_token)
        return await self._unary("ListModels", request)  # type: ignore[no-any-return]

    async def list_personas(self, *, page_size: int = 0, page_token: str = "") -> Any:
        """The coaching personas (ListPersonas); Unimplemented when the server or these stubs lack it."""
        request_type = getattr(pb, "ListPersonasRequest", None)
        if request_type is None:
            raise Unimplemented("this client's stubs have no ListPersonas RPC")
        return await self._unary("ListPersonas", request_type(page_size=page_size, page_token=page_token))

    async def coach(
        self, persona: str, *, conversation_id: str = "", session_id: str = "", max_turns: int = 0
    ) -> CoachSession:
        """Open a coaching session (the bidirectional Coach RPC) and send its `start`."""
        return await open_coach_session(
            self._stub,
            self._metadata,
            persona=persona,
            conversation_id=conversation_id,
            session_id=session_id,
            max_turns=max_turns,
        )

    # ------------------------------------------------------------------------------------------ plumbing

    def _reply_stream(self, **kwargs: Any) -> ReplyStream:
        return ReplyStream(
            self._stub,
            metadata=self._metadata,
            retry=self.retry,
            timeout=self.stream_timeout,
            on_cancel=self.cancel_reply,
            **kwargs,
        )

    async def _unary(self, method: str, request: Any, *, idempotent: bool = True, deadline: float | None = None) -> Any:
        call = getattr(self._stub, method)

        def repeatable(error: BaseException) -> bool:
            return idempotent and isinstance(error, ChatError) and retryable(error)

        async for attempt in self.retry.retrying(repeatable):
            with attempt:
                try:
                    return await call(request, metadata=self._metadata, timeout=deadline or self.timeout)
                except grpc.RpcError as error:
                    raise from_rpc_error(error) from error
        raise AssertionError("unreachable: tenacity returns or raises")
