"""Attachment use cases (`Attachments`, and files carried by messages through `Replies`) against the in-memory
storage, an in-memory attachment store and a scripted provider."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

import pytest

from service.attachments import Attachments, UploadHeader
from service.chat import ConversationFields, Conversations
from service.domain import (
    Attachment,
    Conversation,
    FailedPrecondition,
    Image,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Principal,
    Role,
    Share,
    ShareRole,
    Unavailable,
    new_id,
)
from service.replies import Replies, ReplyOptions
from tests.fakes import FakeAttachmentStore, FakeClock, FakeStorage, ScriptedProvider
from tests.media import JPEG, png, png_of_size
from tests.wired import wire

ALICE = Principal("alice")
BOB = Principal("bob")
LIMIT = 4096
MODEL = "scripted"


@dataclass
class Service:
    attachments: Attachments
    replies: Replies
    conversations: Conversations
    provider: ScriptedProvider
    store: FakeAttachmentStore
    storage: FakeStorage


class MakeService(Protocol):
    def __call__(self, *, takes_images: bool = True, history_token_budget: int = 3072) -> Service: ...


@pytest.fixture
async def make_service() -> AsyncIterator[MakeService]:
    """Wired as `service.app.build` does: the reply provider reads files from the same store uploads write."""
    built: list[Replies] = []

    def make(*, takes_images: bool = True, history_token_budget: int = 3072) -> Service:
        storage, store = FakeStorage(), FakeAttachmentStore()
        provider = ScriptedProvider(pieces=["ok"])
        provider.takes_images = takes_images
        use_cases = wire(
            storage,
            FakeClock(),
            provider,
            attachment_store=store,
            replies=ReplyOptions(flush_interval=0.01, history_token_budget=history_token_budget),
            max_attachment_bytes=LIMIT,
        )
        built.append(use_cases.replies)
        return Service(use_cases.attachments, use_cases.replies, use_cases.conversations, provider, store, storage)

    yield make
    for replies in built:
        await replies.close(0)


@pytest.fixture
def service(make_service: MakeService) -> Service:
    return make_service()


async def chunks_of(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def upload(
    service: Service, data: bytes, content_type: str = "", *, filename: str = "file", principal: Principal = ALICE
) -> Attachment:
    header = UploadHeader(filename, content_type, len(data))
    return await service.attachments.upload(principal, header, chunks_of(data))


def violated_field(error: pytest.ExceptionInfo[InvalidArgument]) -> str:
    (violation,) = error.value.violations
    return violation.field


def nothing_stored(service: Service) -> bool:
    return service.storage.state.attachments == {} and service.store.blobs == {}


async def conversation_of(service: Service, principal: Principal = ALICE) -> Conversation:
    return await service.conversations.create(principal, ConversationFields(model=MODEL))


# ---------------------------------------------------------------------------------------------- upload


async def test_an_upload_stores_the_bytes_and_their_metadata(service: Service) -> None:
    image = png()
    attachment = await upload(service, image, "image/PNG; charset=binary", filename="dot.png")

    assert (attachment.owner, attachment.filename, attachment.size_bytes) == ("alice", "dot.png", len(image))
    assert (attachment.content_type, attachment.sniffed_content_type) == ("image/png", "image/png")
    assert attachment.sha256 == hashlib.sha256(image).hexdigest()
    assert service.storage.state.attachments == {attachment.id: attachment}
    assert service.store.blobs == {attachment.id: image}


async def test_without_a_declared_type_the_sniffed_one_is_taken(service: Service) -> None:
    assert (await upload(service, JPEG)).content_type == "image/jpeg"
    assert (await upload(service, "naïve notes\n".encode())).content_type == "text/plain"
    assert (await upload(service, bytes(range(256)))).content_type == "application/octet-stream"


async def test_an_upload_at_the_limit_is_taken_and_one_byte_over_is_refused_storing_nothing(
    service: Service,
) -> None:
    assert (await upload(service, png_of_size(LIMIT), "image/png")).size_bytes == LIMIT
    service.storage.state.attachments.clear()
    service.store.blobs.clear()

    over = png_of_size(LIMIT + 1)
    with pytest.raises(InvalidArgument, match="CHAT_MAX_ATTACHMENT_BYTES") as error:
        await service.attachments.upload(ALICE, UploadHeader("big.png", "image/png"), chunks_of(over))

    assert violated_field(error) == "data"
    assert nothing_stored(service)


async def test_a_declared_size_over_the_limit_is_refused_before_any_data_is_read(service: Service) -> None:
    read: list[bytes] = []

    async def chunks() -> AsyncIterator[bytes]:
        read.append(b"x")
        yield b"x"

    with pytest.raises(InvalidArgument) as error:
        await service.attachments.upload(ALICE, UploadHeader("big", "", LIMIT + 1), chunks())

    assert violated_field(error) == "metadata.size_bytes"
    assert read == [] and nothing_stored(service)


async def test_the_declared_size_must_be_the_size_sent(service: Service) -> None:
    with pytest.raises(InvalidArgument, match="declared 10 bytes, but 5 were sent") as error:
        await service.attachments.upload(ALICE, UploadHeader("f.txt", "text/plain", 10), chunks_of(b"hello"))

    assert violated_field(error) == "metadata.size_bytes"
    assert nothing_stored(service)


@pytest.mark.parametrize(
    ("data", "declared", "sniffed"),
    [
        (png(), "image/jpeg", "image/png"),
        (JPEG, "image/png", "image/jpeg"),
        (b"just some words", "image/png", "text/plain"),
        (png(), "text/plain", "not UTF-8 text \\(image/png\\)"),
        (bytes(range(256)), "text/csv", "not UTF-8 text \\(application/octet-stream\\)"),
        (b"{\x00}", "application/json", "not UTF-8 text"),
    ],
)
async def test_bytes_that_are_not_the_declared_image_or_text_are_refused(
    service: Service, data: bytes, declared: str, sniffed: str
) -> None:
    with pytest.raises(InvalidArgument, match=f"is {declared}, but the content is {sniffed}") as error:
        await upload(service, data, declared)

    assert violated_field(error) == "metadata.content_type"
    assert nothing_stored(service)


async def test_other_declared_types_are_kept_as_declared_beside_the_sniffed_one(service: Service) -> None:
    attachment = await upload(service, png(), "application/octet-stream")

    assert (attachment.content_type, attachment.sniffed_content_type) == ("application/octet-stream", "image/png")


@pytest.mark.parametrize(
    ("header", "field"),
    [
        (UploadHeader(""), "metadata.filename"),
        (UploadHeader("a\nb"), "metadata.filename"),
        (UploadHeader("x" * 256), "metadata.filename"),
        (UploadHeader("f", "not a type"), "metadata.content_type"),
        (UploadHeader("f", "", -1), "metadata.size_bytes"),
    ],
)
async def test_bad_metadata_is_invalid(service: Service, header: UploadHeader, field: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        await service.attachments.upload(ALICE, header, chunks_of(b"data"))

    assert violated_field(error) == field
    assert nothing_stored(service)


async def test_an_empty_file_is_invalid(service: Service) -> None:
    with pytest.raises(InvalidArgument) as error:
        await service.attachments.upload(ALICE, UploadHeader("empty.txt"), chunks_of(b""))

    assert violated_field(error) == "data"


async def test_an_upload_cancelled_midway_leaves_nothing_behind(service: Service) -> None:
    started = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        yield b"first bytes"
        started.set()
        await asyncio.Event().wait()  # the client sends nothing more
        yield b""

    task = asyncio.create_task(service.attachments.upload(ALICE, UploadHeader("f.txt"), stalls()))
    async with asyncio.timeout(5):
        await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert nothing_stored(service)


async def test_a_store_that_fails_midway_leaves_nothing_behind(service: Service) -> None:
    service.store.fail_puts = True

    with pytest.raises(Unavailable):
        await upload(service, png(), "image/png")

    assert nothing_stored(service)


async def test_bytes_whose_metadata_cannot_be_written_are_deleted(service: Service) -> None:
    service.storage.unavailable = True

    with pytest.raises(Unavailable):
        await upload(service, png(), "image/png")

    service.storage.unavailable = False
    assert nothing_stored(service)
    assert len(service.store.deleted) == 1


# ---------------------------------------------------------------------------------------------- access


async def test_the_owner_gets_and_downloads_an_attachment(service: Service) -> None:
    attachment = await upload(service, png(), "image/png")

    assert await service.attachments.get(ALICE, attachment.id) == attachment
    download = await service.attachments.download(ALICE, attachment.id)
    assert download.attachment == attachment
    assert b"".join([chunk async for chunk in download.chunks]) == png()


async def test_a_download_whose_bytes_the_store_lost_ends_in_an_error_not_a_short_file(service: Service) -> None:
    attachment = await upload(service, png(), "image/png")
    service.store.blobs[attachment.id] = png()[:10]

    download = await service.attachments.download(ALICE, attachment.id)
    received: list[bytes] = []

    async def read_all() -> None:
        async for chunk in download.chunks:
            received.append(chunk)

    with pytest.raises(NotFound, match="missing from the attachment store"):
        await read_all()
    assert b"".join(received) == png()[:10]


async def test_another_user_may_not_get_download_use_or_delete_an_attachment(service: Service) -> None:
    attachment = await upload(service, png(), "image/png")
    conversation = await conversation_of(service, BOB)

    with pytest.raises(PermissionDenied):
        await service.attachments.get(BOB, attachment.id)
    with pytest.raises(PermissionDenied):
        await service.attachments.download(BOB, attachment.id)
    with pytest.raises(PermissionDenied):
        await service.attachments.delete(BOB, attachment.id)
    with pytest.raises(PermissionDenied):
        await service.replies.send(BOB, conversation.id, "hi", "", background=False, attachment_ids=[attachment.id])
    assert service.storage.messages_in(conversation.id) == []


async def test_a_missing_attachment_is_not_found(service: Service) -> None:
    missing = new_id()
    with pytest.raises(NotFound):
        await service.attachments.get(ALICE, missing)
    with pytest.raises(NotFound):
        await service.attachments.delete(ALICE, missing)
    conversation = await conversation_of(service)
    with pytest.raises(NotFound):
        await service.replies.send(ALICE, conversation.id, "hi", "", background=False, attachment_ids=[missing])


async def test_a_viewer_reads_the_attachments_of_a_shared_conversation_only(service: Service) -> None:
    carried = await upload(service, b"shared notes", "text/plain")
    kept = await upload(service, b"private notes", "text/plain")
    conversation = await conversation_of(service)
    await service.replies.send(ALICE, conversation.id, "read this", "", background=False, attachment_ids=[carried.id])
    async with service.storage.unit_of_work() as uow:
        await uow.shares.add(Share(conversation.id, "bob", ShareRole.VIEWER, conversation.create_time))
        await uow.commit()

    assert await service.attachments.get(BOB, carried.id) == carried
    download = await service.attachments.download(BOB, carried.id)
    assert b"".join([chunk async for chunk in download.chunks]) == b"shared notes"
    with pytest.raises(PermissionDenied):
        await service.attachments.get(BOB, kept.id)
    with pytest.raises(PermissionDenied):
        await service.attachments.delete(BOB, carried.id)


async def test_deleting_an_attachment_removes_it_from_the_messages_that_carried_it(service: Service) -> None:
    attachment = await upload(service, b"notes", "text/plain")
    conversation = await conversation_of(service)
    await service.replies.send(ALICE, conversation.id, "see", "", background=False, attachment_ids=[attachment.id])

    await service.attachments.delete(ALICE, attachment.id)

    assert nothing_stored(service)
    page = await service.conversations.messages(ALICE, conversation.id, 10, "")
    assert [m.attachment_ids for m in page.items] == [(), ()]


# ---------------------------------------------------------------------------------------------- messages


async def test_a_text_file_goes_into_the_prompt_before_the_message(service: Service) -> None:
    notes = await upload(service, b"apples: 3\npears: 5\n", "text/csv", filename="fruit.csv")
    conversation = await conversation_of(service)

    user, reply = await service.replies.send(
        ALICE, conversation.id, "How many pears?", "", background=False, attachment_ids=[notes.id]
    )

    assert user.attachment_ids == (notes.id,) and reply.content == "ok"
    (turn,) = [t for t in service.provider.prompts[-1].turns if t.role is Role.USER]
    assert turn.content == '<file name="fruit.csv" type="text/csv">\napples: 3\npears: 5\n\n</file>\n\nHow many pears?'
    assert turn.images == () and turn.attachments == ()


async def test_images_reach_the_provider_as_images_and_stay_in_the_history(service: Service) -> None:
    first, second = await upload(service, png(), "image/png"), await upload(service, JPEG, "image/jpeg")
    conversation = await conversation_of(service)

    await service.replies.send(
        ALICE, conversation.id, "What is this?", "", background=False, attachment_ids=[first.id, second.id]
    )
    await service.replies.send(ALICE, conversation.id, "And its colour?", "", background=False)

    turns = [t for t in service.provider.prompts[-1].turns if t.role is Role.USER]
    assert [t.content for t in turns] == ["What is this?", "And its colour?"]
    assert turns[0].images == (Image("image/png", png()), Image("image/jpeg", JPEG))
    assert turns[1].images == ()
    page = await service.conversations.messages(ALICE, conversation.id, 10, "")
    assert [m.attachment_ids for m in page.items] == [(first.id, second.id), (), (), ()]


async def test_an_image_for_a_provider_without_images_is_a_failed_precondition(make_service: MakeService) -> None:
    service = make_service(takes_images=False)
    image = await upload(service, png(), "image/png")
    conversation = await conversation_of(service)

    with pytest.raises(FailedPrecondition, match="does not take images") as error:
        await service.replies.send(ALICE, conversation.id, "hi", "", background=False, attachment_ids=[image.id])

    assert error.value.metadata == {"attachmentId": image.id, "contentType": "image/png"}
    assert service.storage.messages_in(conversation.id) == []


async def test_a_file_a_model_cannot_read_is_invalid_naming_its_type(service: Service) -> None:
    text = await upload(service, b"fine", "text/plain")
    binary = await upload(service, b"%PDF-1.7\n" + bytes(range(256)), "application/pdf")
    conversation = await conversation_of(service)

    with pytest.raises(InvalidArgument, match="is application/pdf") as error:
        await service.replies.send(
            ALICE, conversation.id, "hi", "", background=False, attachment_ids=[text.id, binary.id]
        )

    assert violated_field(error) == "attachment_ids[1]"
    assert service.storage.messages_in(conversation.id) == []


async def test_text_files_over_the_context_budget_are_invalid(make_service: MakeService) -> None:
    service = make_service(history_token_budget=100)
    big = await upload(service, b"word " * 100, "text/plain")
    conversation = await conversation_of(service)

    with pytest.raises(InvalidArgument, match="CHAT_HISTORY_TOKEN_BUDGET") as error:
        await service.replies.send(ALICE, conversation.id, "hi", "", background=False, attachment_ids=[big.id])

    assert violated_field(error) == "attachment_ids"
    assert service.storage.messages_in(conversation.id) == []


async def test_an_old_text_file_leaves_the_history_window_like_old_text(make_service: MakeService) -> None:
    service = make_service(history_token_budget=200)
    notes = await upload(service, b"n" * 600, "text/plain")  # about 154 tokens
    conversation = await conversation_of(service)
    await service.replies.send(ALICE, conversation.id, "read", "", background=False, attachment_ids=[notes.id])

    await service.replies.send(ALICE, conversation.id, "x" * 200, "", background=False)

    assert [t.content for t in service.provider.prompts[-1].turns] == ["ok", "x" * 200]


@pytest.mark.parametrize(
    ("ids", "field"),
    [
        (["not-a-uuid"], "attachment_ids[0]"),
        (lambda same: [same, same], "attachment_ids"),
        (lambda _: [new_id() for _ in range(17)], "attachment_ids"),
    ],
)
async def test_malformed_attachment_ids_are_invalid(
    service: Service, ids: list[str] | Callable[[str], list[str]], field: str
) -> None:
    conversation = await conversation_of(service)
    given = ids(new_id()) if callable(ids) else ids

    with pytest.raises(InvalidArgument) as error:
        await service.replies.send(ALICE, conversation.id, "hi", "", background=False, attachment_ids=given)

    assert violated_field(error) == field
