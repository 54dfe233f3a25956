"""Files carried by messages as the model servers receive them, through the whole service: images as Ollama's
`images` (base64) and as OpenAI `image_url` content parts (data URLs), text files inside the message's text."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from chat.v1 import chat_pb2 as pb
from tests.integration.harness import Replica, running_replica, settings_for
from tests.media import JPEG, png
from tests.wire.ollama_server import OllamaServer
from tests.wire.openai_server import OpenAIServer

pytestmark = pytest.mark.timeout(30)

NOTES = b"colour: teal\n"


async def upload(replica: Replica, data: bytes, filename: str, content_type: str) -> str:
    metadata = pb.AttachmentMetadata(filename=filename, content_type=content_type)
    messages = [pb.UploadAttachmentRequest(metadata=metadata), pb.UploadAttachmentRequest(data=data)]
    call = replica.stub.UploadAttachment(iter(messages), metadata=await replica.auth("alice"))
    return (await call).attachment.attachment_id


async def ask_with_files(replica: Replica, model: str) -> pb.Message:
    """Upload a PNG, a JPEG and a text file, send them with a question, and a follow-up without files."""
    ids = [
        await upload(replica, png(), "dot.png", "image/png"),
        await upload(replica, JPEG, "photo.jpg", "image/jpeg"),
        await upload(replica, NOTES, "notes.txt", "text/plain"),
    ]
    conversation = await replica.conversation("alice", model=model)
    auth = await replica.auth("alice")
    first = await replica.stub.SendMessage(
        pb.SendMessageRequest(
            conversation_id=conversation.conversation_id, content="What is this?", attachment_ids=ids
        ),
        metadata=auth,
    )
    assert first.message.status == pb.MESSAGE_STATUS_COMPLETED
    second = await replica.stub.SendMessage(
        pb.SendMessageRequest(conversation_id=conversation.conversation_id, content="And the colour?"), metadata=auth
    )
    return second.message


def text_of(notes: bytes, question: str) -> str:
    return f'<file name="notes.txt" type="text/plain">\n{notes.decode()}\n</file>\n\n{question}'


def data_url(media_type: str, data: bytes) -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


async def test_ollama_receives_images_as_base64_and_text_files_in_the_message(database_url: str) -> None:
    async with OllamaServer() as server:
        settings = settings_for(database_url, llm_provider="ollama", llm_url=server.url, default_model="llama3.2")
        async with running_replica(settings) as replica:
            reply = await ask_with_files(replica, "llama3.2")
        first, second = server.chat_requests

    assert reply.status == pb.MESSAGE_STATUS_COMPLETED
    carrying: dict[str, Any] = {
        "role": "user",
        "content": text_of(NOTES, "What is this?"),
        "images": [base64.b64encode(png()).decode(), base64.b64encode(JPEG).decode()],
    }
    assert first["messages"] == [carrying]
    # The files stay with their message in the history of the next request.
    assert second["messages"][0] == carrying
    assert second["messages"][-1] == {"role": "user", "content": "And the colour?"}


async def test_openai_receives_images_as_image_url_parts(database_url: str) -> None:
    async with OpenAIServer() as server:
        settings = settings_for(database_url, llm_provider="openai", llm_url=server.url)
        async with running_replica(settings) as replica:
            reply = await ask_with_files(replica, "default")
        first, second = server.chat_requests

    assert reply.status == pb.MESSAGE_STATUS_COMPLETED
    carrying = {
        "role": "user",
        "content": [
            {"type": "text", "text": text_of(NOTES, "What is this?")},
            {"type": "image_url", "image_url": {"url": data_url("image/png", png())}},
            {"type": "image_url", "image_url": {"url": data_url("image/jpeg", JPEG)}},
        ],
    }
    assert first["messages"] == [carrying]
    assert second["messages"][0] == carrying
    assert second["messages"][-1] == {"role": "user", "content": "And the colour?"}
