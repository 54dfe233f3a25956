"""ChatService: each method converts the request, calls one use case, converts the result."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from chat.v1 import chat_pb2 as pb
from chat.v1 import chat_pb2_grpc
from service.attachments import Attachments
from service.branches import Branches
from service.chat import Conversations
from service.coaching.coach import Coaching
from service.replies import Replies, Started
from service.rpc import convert, sharing_convert
from service.rpc.coaching_methods import CoachingMethods
from service.rpc.context import current_principal
from service.rpc.handlers import Context
from service.rpc.sharing_methods import AttachmentMethods, SharingMethods
from service.sharing import Sharing

EXPORT_CHUNK_BYTES = 256 * 1024


class ChatServicer(CoachingMethods, AttachmentMethods, SharingMethods, chat_pb2_grpc.ChatServiceServicer):
    def __init__(
        self,
        conversations: Conversations,
        replies: Replies,
        coaching: Coaching,
        *,
        attachments: Attachments,
        sharing: Sharing,
        branches: Branches,
        default_model: str,
        link_to_generation: Callable[[str], None] = lambda conversation_id: None,
    ) -> None:
        self._attachments = attachments
        self._sharing = sharing
        self._link_to_generation = link_to_generation
        self._conversations = conversations
        self._replies = replies
        self._coaching = coaching
        self._branches = branches
        self._default_model = default_model

    async def CreateConversation(
        self, request: pb.CreateConversationRequest, context: Context
    ) -> pb.CreateConversationResponse:
        created = await self._conversations.create(current_principal(), convert.conversation_fields(request))
        return pb.CreateConversationResponse(conversation=convert.conversation(created))

    async def GetConversation(self, request: pb.GetConversationRequest, context: Context) -> pb.GetConversationResponse:
        found = await self._conversations.get(current_principal(), request.conversation_id)
        return pb.GetConversationResponse(conversation=convert.conversation(found))

    async def ListConversations(
        self, request: pb.ListConversationsRequest, context: Context
    ) -> pb.ListConversationsResponse:
        page = await self._conversations.list(
            current_principal(), request.page_size, request.page_token, sharing_convert.scope(request.scope)
        )
        return pb.ListConversationsResponse(
            conversations=[convert.conversation(c) for c in page.items], next_page_token=page.next_page_token
        )

    async def UpdateConversation(
        self, request: pb.UpdateConversationRequest, context: Context
    ) -> pb.UpdateConversationResponse:
        updated = await self._conversations.update(
            current_principal(),
            request.conversation.conversation_id,
            convert.conversation_fields(request.conversation),
            list(request.update_mask.paths),
        )
        return pb.UpdateConversationResponse(conversation=convert.conversation(updated))

    async def DeleteConversation(
        self, request: pb.DeleteConversationRequest, context: Context
    ) -> pb.DeleteConversationResponse:
        await self._conversations.delete(current_principal(), request.conversation_id)
        return pb.DeleteConversationResponse()

    async def ListMessages(self, request: pb.ListMessagesRequest, context: Context) -> pb.ListMessagesResponse:
        page = await self._conversations.messages(
            current_principal(),
            request.conversation_id,
            request.page_size,
            request.page_token,
            request.branch_message_id,
        )
        return pb.ListMessagesResponse(
            messages=[convert.message(m) for m in page.items], next_page_token=page.next_page_token
        )

    async def SendMessage(self, request: pb.SendMessageRequest, context: Context) -> pb.SendMessageResponse:
        user, assistant = await self._replies.send(
            current_principal(),
            request.conversation_id,
            request.content,
            request.request_id,
            background=request.background,
            attachment_ids=request.attachment_ids,
        )
        return pb.SendMessageResponse(message=convert.message(assistant), user_message=convert.message(user))

    async def StreamReply(
        self, request: pb.StreamReplyRequest, context: Context
    ) -> AsyncIterator[pb.StreamReplyResponse]:
        events = self._replies.stream(
            current_principal(),
            request.conversation_id,
            request.content,
            request.request_id,
            attachment_ids=request.attachment_ids,
        )
        async for event in events:
            yield pb.StreamReplyResponse(event=convert.reply_event(event))

    async def ResumeReply(
        self, request: pb.ResumeReplyRequest, context: Context
    ) -> AsyncIterator[pb.ResumeReplyResponse]:
        events = self._replies.resume(current_principal(), request.message_id, request.offset, request.generation)
        async for event in events:
            if isinstance(event, Started):
                self._link_to_generation(event.assistant_message.conversation_id)
            yield pb.ResumeReplyResponse(event=convert.reply_event(event))

    async def CancelReply(self, request: pb.CancelReplyRequest, context: Context) -> pb.CancelReplyResponse:
        cancelled = await self._replies.cancel(current_principal(), request.message_id)
        return pb.CancelReplyResponse(message=convert.message(cancelled))

    async def ListModels(self, request: pb.ListModelsRequest, context: Context) -> pb.ListModelsResponse:
        page = await self._conversations.models(request.page_size, request.page_token)
        return pb.ListModelsResponse(
            models=[convert.model(m, default_model=self._default_model) for m in page.items],
            next_page_token=page.next_page_token,
        )

    async def SearchMessages(self, request: pb.SearchMessagesRequest, context: Context) -> pb.SearchMessagesResponse:
        page = await self._conversations.search(
            current_principal(),
            request.query,
            request.page_size,
            request.page_token,
            sharing_convert.scope(request.scope),
        )
        return pb.SearchMessagesResponse(
            results=[convert.search_result(hit) for hit in page.items], next_page_token=page.next_page_token
        )

    async def ExportConversation(
        self, request: pb.ExportConversationRequest, context: Context
    ) -> AsyncIterator[pb.ExportConversationResponse]:
        fmt = convert.export_format(request.format)
        pieces = self._conversations.export(
            current_principal(),
            request.conversation_id,
            fmt,
            first_index=request.first_index,
            header=not request.omit_header,
            branch_message_id=request.branch_message_id,
        )
        content_type = convert.media_type(fmt)
        async for piece in pieces:
            data = piece.encode()
            for start in range(0, len(data), EXPORT_CHUNK_BYTES):
                yield pb.ExportConversationResponse(
                    data=data[start : start + EXPORT_CHUNK_BYTES], content_type=content_type
                )
                content_type = ""

    # ------------------------------------------------------------------------------------------ the message tree

    async def RegenerateReply(
        self, request: pb.RegenerateReplyRequest, context: Context
    ) -> AsyncIterator[pb.RegenerateReplyResponse]:
        events = self._replies.regenerate(current_principal(), request.message_id, request.request_id)
        async for event in events:
            yield pb.RegenerateReplyResponse(event=convert.reply_event(event))

    async def EditMessage(
        self, request: pb.EditMessageRequest, context: Context
    ) -> AsyncIterator[pb.EditMessageResponse]:
        events = self._replies.edit(current_principal(), request.message_id, request.content, request.request_id)
        async for event in events:
            yield pb.EditMessageResponse(event=convert.reply_event(event))

    async def SetCurrentBranch(
        self, request: pb.SetCurrentBranchRequest, context: Context
    ) -> pb.SetCurrentBranchResponse:
        updated = await self._branches.set_current(current_principal(), request.conversation_id, request.message_id)
        return pb.SetCurrentBranchResponse(conversation=convert.conversation(updated))

    async def ListSiblings(self, request: pb.ListSiblingsRequest, context: Context) -> pb.ListSiblingsResponse:
        page = await self._branches.siblings(
            current_principal(), request.message_id, request.page_size, request.page_token
        )
        return pb.ListSiblingsResponse(
            messages=[convert.message(m) for m in page.items], next_page_token=page.next_page_token
        )

    async def DeleteMessage(self, request: pb.DeleteMessageRequest, context: Context) -> pb.DeleteMessageResponse:
        conversation, deleted = await self._branches.delete(current_principal(), request.message_id)
        return pb.DeleteMessageResponse(conversation=convert.conversation(conversation), deleted_count=deleted)
