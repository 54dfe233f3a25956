"""Pure conversions for the attachment and sharing RPCs, and the upload stream's messages into the use case's."""

from __future__ import annotations

from collections.abc import AsyncIterator

from chat.v1 import chat_pb2 as pb
from service.attachments import UploadHeader
from service.domain import Attachment, ConversationScope, InvalidArgument, Share, ShareRole
from service.rpc.convert import timestamp

SCOPES: dict[int, ConversationScope] = {
    pb.CONVERSATION_SCOPE_UNSPECIFIED: ConversationScope.OWNED,
    pb.CONVERSATION_SCOPE_OWNED: ConversationScope.OWNED,
    pb.CONVERSATION_SCOPE_SHARED: ConversationScope.SHARED,
    pb.CONVERSATION_SCOPE_ALL: ConversationScope.ALL,
}
ROLES: dict[int, ShareRole] = {pb.SHARE_ROLE_UNSPECIFIED: ShareRole.VIEWER, pb.SHARE_ROLE_VIEWER: ShareRole.VIEWER}
ROLE_VALUES = {ShareRole.VIEWER: pb.SHARE_ROLE_VIEWER}


def scope(value: int) -> ConversationScope:
    found = SCOPES.get(value)
    if found is None:
        raise InvalidArgument.field("scope", "must be OWNED, SHARED or ALL")
    return found


def share_role(value: int) -> ShareRole:
    found = ROLES.get(value)
    if found is None:
        raise InvalidArgument.field("role", "must be VIEWER")
    return found


def share(s: Share) -> pb.ConversationShare:
    return pb.ConversationShare(
        conversation_id=s.conversation_id,
        user_id=s.user_id,
        role=ROLE_VALUES[s.role],
        create_time=timestamp(s.create_time),
    )


def attachment(a: Attachment) -> pb.Attachment:
    return pb.Attachment(
        attachment_id=a.id,
        filename=a.filename,
        content_type=a.content_type,
        sniffed_content_type=a.sniffed_content_type,
        size_bytes=a.size_bytes,
        sha256=a.sha256,
        create_time=timestamp(a.create_time),
    )


async def upload(requests: AsyncIterator[pb.UploadAttachmentRequest]) -> tuple[UploadHeader, AsyncIterator[bytes]]:
    """An upload stream as the use case takes it: the header from the first message, then the bytes."""
    first = await anext(aiter(requests), None)
    if first is None or first.WhichOneof("part") != "metadata":
        raise InvalidArgument.field("metadata", "must come first: the file's name and type, then its bytes")
    metadata = first.metadata
    return UploadHeader(metadata.filename, metadata.content_type, metadata.size_bytes), _data(requests)


async def _data(requests: AsyncIterator[pb.UploadAttachmentRequest]) -> AsyncIterator[bytes]:
    async for request in requests:
        if request.WhichOneof("part") != "data":
            raise InvalidArgument.field("metadata", "must be sent once, before the data")
        yield request.data
