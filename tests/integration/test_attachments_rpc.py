"""Attachments over a real server, on SQLite and Postgres: uploads at and over the limit, interrupted uploads
that leave no row behind, sniffed-type mismatches, downloads, access, and files carried by messages."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
import pytest
import sqlalchemy as sa

from chat.v1 import chat_pb2 as pb
from service.llm.fake import FakeProvider
from service.storage.tables import attachment_chunks, attachments, message_attachments
from tests.integration.harness import Replica, running_replica, settings_for
from tests.integration.hostile import access_log
from tests.integration.rpc_errors import violations
from tests.media import JPEG, png, png_of_size

pytestmark = pytest.mark.timeout(60)

LIMIT = 600 * 1024  # over the database store's chunk (256 KiB): a file at the limit spans several rows
UPLOAD = "/chat.v1.ChatService/UploadAttachment"


@pytest.fixture
async def replica(database_url: str) -> AsyncIterator[Replica]:
    async with running_replica(settings_for(database_url, max_attachment_bytes=LIMIT)) as running:
        yield running


def requests(
    data: bytes, *, filename: str = "file", content_type: str = "", size: int = 0, chunk: int = 64 * 1024
) -> list[pb.UploadAttachmentRequest]:
    metadata = pb.AttachmentMetadata(filename=filename, content_type=content_type, size_bytes=size)
    chunks = [pb.UploadAttachmentRequest(data=data[i : i + chunk]) for i in range(0, len(data), chunk)]
    return [pb.UploadAttachmentRequest(metadata=metadata), *chunks]


async def upload(replica: Replica, user: str, data: bytes, **metadata: Any) -> pb.Attachment:
    call = replica.stub.UploadAttachment(iter(requests(data, **metadata)), metadata=await replica.auth(user))
    return (await call).attachment


async def refused(replica: Replica, messages: Sequence[pb.UploadAttachmentRequest]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await replica.stub.UploadAttachment(iter(messages), metadata=await replica.auth("alice"))
    return error.value


async def rows(replica: Replica) -> dict[str, int]:
    """Rows of the attachment tables, counted in the database itself."""
    async with replica.app.deps.database.connection() as conn:
        counts = {}
        for table in (attachments, attachment_chunks, message_attachments):
            counts[table.name] = (await conn.execute(sa.select(sa.func.count()).select_from(table))).scalar_one()
    return counts


NONE = {"attachments": 0, "attachment_chunks": 0, "message_attachments": 0}


async def download(replica: Replica, user: str, attachment_id: str) -> list[pb.DownloadAttachmentResponse]:
    call = replica.stub.DownloadAttachment(
        pb.DownloadAttachmentRequest(attachment_id=attachment_id), metadata=await replica.auth(user)
    )
    return [response async for response in call]


# ---------------------------------------------------------------------------------------------- upload


async def test_a_file_at_the_limit_is_stored_in_chunks_and_downloads_whole(replica: Replica) -> None:
    image = png_of_size(LIMIT)

    stored = await upload(replica, "alice", image, filename="big.png", content_type="image/png", size=LIMIT)

    assert (stored.filename, stored.content_type, stored.sniffed_content_type) == ("big.png", "image/png", "image/png")
    assert (stored.size_bytes, stored.sha256) == (LIMIT, hashlib.sha256(image).hexdigest())
    assert await rows(replica) == {**NONE, "attachments": 1, "attachment_chunks": 3}
    chunks = await download(replica, "alice", stored.attachment_id)
    assert chunks[0].attachment == stored and all(not c.HasField("attachment") for c in chunks[1:])
    assert b"".join(c.data for c in chunks) == image
    got = await replica.stub.GetAttachment(
        pb.GetAttachmentRequest(attachment_id=stored.attachment_id), metadata=await replica.auth("alice")
    )
    assert got.attachment == stored


async def test_one_byte_over_the_limit_is_invalid_and_stores_nothing(replica: Replica) -> None:
    error = await refused(replica, requests(png_of_size(LIMIT + 1), content_type="image/png"))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "CHAT_MAX_ATTACHMENT_BYTES" in violations(error)["data"]
    assert await rows(replica) == NONE


async def test_a_declared_size_over_the_limit_is_refused_at_once(replica: Replica) -> None:
    error = await refused(replica, requests(b"small", size=LIMIT + 1))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "metadata.size_bytes" in violations(error)
    assert await rows(replica) == NONE


async def test_bytes_that_are_not_the_declared_type_are_invalid(replica: Replica) -> None:
    error = await refused(replica, requests(png(), filename="photo.jpg", content_type="image/jpeg"))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(error) == {
        "metadata.content_type": "is image/jpeg, but the content is image/png: declare what the file is"
    }
    assert await rows(replica) == NONE


async def test_the_metadata_comes_first_and_once(replica: Replica) -> None:
    first = await refused(replica, [pb.UploadAttachmentRequest(data=b"bytes first")])
    twice = await refused(replica, [*requests(b"text"), requests(b"again")[0]])
    nothing = await refused(replica, [])

    for error in (first, twice, nothing):
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "metadata" in violations(error)
    assert await rows(replica) == NONE


async def test_an_upload_the_client_cancels_leaves_no_row(replica: Replica) -> None:
    with access_log() as log:
        call = replica.stub.UploadAttachment(metadata=await replica.auth("alice"))
        for message in requests(png_of_size(LIMIT), content_type="image/png")[:6]:
            await call.write(message)
        call.cancel()
        entry = await log.entry(0)  # the server has finished with the call

    assert (entry.method, entry.code) == (UPLOAD, "CANCELLED")
    assert await rows(replica) == NONE


async def test_an_upload_past_its_deadline_leaves_no_row(replica: Replica) -> None:
    with access_log() as log:
        call = replica.stub.UploadAttachment(metadata=await replica.auth("alice"), timeout=0.5)
        for message in requests(b"some text, then nothing more")[:2]:
            await call.write(message)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call  # the client never finishes writing
        entry = await log.entry(0)

    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert entry.method == UPLOAD
    assert await rows(replica) == NONE


# ---------------------------------------------------------------------------------------------- access


async def test_only_the_owner_reads_an_unshared_attachment(replica: Replica) -> None:
    stored = await upload(replica, "alice", b"private", content_type="text/plain")
    bob = await replica.auth("bob")

    for call in (
        replica.stub.GetAttachment(pb.GetAttachmentRequest(attachment_id=stored.attachment_id), metadata=bob),
        replica.stub.DeleteAttachment(pb.DeleteAttachmentRequest(attachment_id=stored.attachment_id), metadata=bob),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await call
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as download_denied:
        await download(replica, "bob", stored.attachment_id)
    assert download_denied.value.code() == grpc.StatusCode.PERMISSION_DENIED

    missing = "00000000-0000-4000-8000-000000000000"
    with pytest.raises(grpc.aio.AioRpcError) as not_found:
        await download(replica, "alice", missing)
    assert not_found.value.code() == grpc.StatusCode.NOT_FOUND


async def test_deleting_an_attachment_deletes_its_bytes(replica: Replica) -> None:
    stored = await upload(replica, "alice", b"gone soon", content_type="text/plain")

    await replica.stub.DeleteAttachment(
        pb.DeleteAttachmentRequest(attachment_id=stored.attachment_id), metadata=await replica.auth("alice")
    )

    assert await rows(replica) == NONE


# ---------------------------------------------------------------------------------------------- messages


async def test_a_message_carries_its_files_and_lists_them(replica: Replica) -> None:
    auth = await replica.auth("alice")
    notes = await upload(replica, "alice", b"apples, pears", filename="fruit.csv", content_type="text/csv")
    image = await upload(replica, "alice", JPEG, filename="photo.jpg")
    conversation = await replica.conversation("alice")
    ids = [notes.attachment_id, image.attachment_id]

    stream = replica.stub.StreamReply(
        pb.StreamReplyRequest(conversation_id=conversation.conversation_id, content="look", attachment_ids=ids),
        metadata=auth,
    )
    events = [response.event async for response in stream]
    started = events[0].started
    assert events[-1].completed.message.status == pb.MESSAGE_STATUS_COMPLETED

    assert list(started.user_message.attachment_ids) == ids
    listed = await replica.stub.ListMessages(
        pb.ListMessagesRequest(conversation_id=conversation.conversation_id), metadata=auth
    )
    assert [list(m.attachment_ids) for m in listed.messages] == [ids, []]
    assert (await rows(replica))["message_attachments"] == 2


async def test_files_a_message_cannot_carry_are_refused_naming_them(replica: Replica) -> None:
    auth = await replica.auth("alice")
    archive = await upload(replica, "alice", b"PK\x03\x04" + bytes(range(256)), content_type="application/zip")
    theirs = await upload(replica, "bob", b"bob's notes", content_type="text/plain")
    conversation = await replica.conversation("alice")

    def send(*ids: str) -> grpc.aio.UnaryUnaryCall[pb.SendMessageRequest, pb.SendMessageResponse]:
        request = pb.SendMessageRequest(conversation_id=conversation.conversation_id, content="hi", attachment_ids=ids)
        return replica.stub.SendMessage(request, metadata=auth)

    with pytest.raises(grpc.aio.AioRpcError) as wrong_type:
        await send(archive.attachment_id)
    assert wrong_type.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "application/zip" in violations(wrong_type.value)["attachment_ids[0]"]
    with pytest.raises(grpc.aio.AioRpcError) as not_mine:
        await send(theirs.attachment_id)
    assert not_mine.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as malformed:
        await send("not-an-id")
    assert "attachment_ids[0]" in violations(malformed.value)
    listed = await replica.stub.ListMessages(
        pb.ListMessagesRequest(conversation_id=conversation.conversation_id), metadata=auth
    )
    assert list(listed.messages) == []


class TextOnlyModel(FakeProvider):
    """The fake model, saying (like the local provider) that it takes no images."""

    takes_images = False


async def test_an_image_for_a_provider_without_images_is_a_failed_precondition(database_url: str) -> None:
    async with running_replica(settings_for(database_url), provider=TextOnlyModel()) as replica:
        image = await upload(replica, "alice", png(), content_type="image/png")
        conversation = await replica.conversation("alice")
        request = pb.SendMessageRequest(
            conversation_id=conversation.conversation_id, content="hi", attachment_ids=[image.attachment_id]
        )
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await replica.stub.SendMessage(request, metadata=await replica.auth("alice"))
        assert (await rows(replica))["message_attachments"] == 0
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "does not take images" in (error.value.details() or "")
