"""The attachment and sharing RPCs of ChatService: convert, call the use case, convert back."""

from __future__ import annotations

from collections.abc import AsyncIterator

from chat.v1 import chat_pb2 as pb
from service.attachments import Attachments
from service.rpc import sharing_convert
from service.rpc.context import current_principal
from service.rpc.handlers import Context
from service.sharing import Sharing

DOWNLOAD_CHUNK_BYTES = 256 * 1024


class AttachmentMethods:
    """Mixed into `ChatServicer`: gRPC serves one servicer object per service."""

    _attachments: Attachments

    async def UploadAttachment(
        self, request_iterator: AsyncIterator[pb.UploadAttachmentRequest], context: Context
    ) -> pb.UploadAttachmentResponse:
        header, chunks = await sharing_convert.upload(request_iterator)
        stored = await self._attachments.upload(current_principal(), header, chunks)
        return pb.UploadAttachmentResponse(attachment=sharing_convert.attachment(stored))

    async def GetAttachment(self, request: pb.GetAttachmentRequest, context: Context) -> pb.GetAttachmentResponse:
        found = await self._attachments.get(current_principal(), request.attachment_id)
        return pb.GetAttachmentResponse(attachment=sharing_convert.attachment(found))

    async def DownloadAttachment(
        self, request: pb.DownloadAttachmentRequest, context: Context
    ) -> AsyncIterator[pb.DownloadAttachmentResponse]:
        download = await self._attachments.download(current_principal(), request.attachment_id)
        metadata: pb.Attachment | None = sharing_convert.attachment(download.attachment)
        async for chunk in download.chunks:
            for start in range(0, len(chunk), DOWNLOAD_CHUNK_BYTES):
                yield pb.DownloadAttachmentResponse(
                    data=chunk[start : start + DOWNLOAD_CHUNK_BYTES], attachment=metadata
                )
                metadata = None

    async def DeleteAttachment(
        self, request: pb.DeleteAttachmentRequest, context: Context
    ) -> pb.DeleteAttachmentResponse:
        await self._attachments.delete(current_principal(), request.attachment_id)
        return pb.DeleteAttachmentResponse()


class SharingMethods:
    """Mixed into `ChatServicer`."""

    _sharing: Sharing

    async def ShareConversation(
        self, request: pb.ShareConversationRequest, context: Context
    ) -> pb.ShareConversationResponse:
        role = sharing_convert.share_role(request.role)
        granted = await self._sharing.share(current_principal(), request.conversation_id, request.user_id, role)
        return pb.ShareConversationResponse(share=sharing_convert.share(granted))

    async def UnshareConversation(
        self, request: pb.UnshareConversationRequest, context: Context
    ) -> pb.UnshareConversationResponse:
        await self._sharing.unshare(current_principal(), request.conversation_id, request.user_id)
        return pb.UnshareConversationResponse()

    async def ListConversationShares(
        self, request: pb.ListConversationSharesRequest, context: Context
    ) -> pb.ListConversationSharesResponse:
        page = await self._sharing.shares(
            current_principal(), request.conversation_id, request.page_size, request.page_token
        )
        return pb.ListConversationSharesResponse(
            shares=[sharing_convert.share(s) for s in page.items], next_page_token=page.next_page_token
        )
