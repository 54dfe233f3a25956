"""The files of a prompt, read just before the model is called: `FileReadingProvider` wraps the provider every
reply uses (service/app.py), so the prompt holds only the files' metadata (which the history window counts) until
the generation runs, and no unit of work ever waits on the attachment store."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Sequence

from service.domain import PROMPT_IMAGE_TYPES, Attachment, ChatTurn, Completion, Image, ModelInfo, Prompt
from service.ports import AttachmentStore, Provider


class FileReadingProvider:
    """Implements `ports.Provider` around another: each turn's attachments are read from the store, text files
    into the turn's text (before the message, each in a <file> block) and images into `ChatTurn.images`, which
    the adapters send as their API wants (Ollama's `images`, OpenAI's `image_url` parts)."""

    def __init__(self, inner: Provider, store: AttachmentStore) -> None:
        self._inner = inner
        self._store = store
        self.name = inner.name
        self.continues = inner.continues
        self.takes_images = inner.takes_images

    def stream(self, prompt: Prompt) -> AsyncIterator[str | Completion]:
        if not any(turn.attachments for turn in prompt.turns):
            return self._inner.stream(prompt)  # no generator layer of its own on the per-token path
        return self._stream_with_files(prompt)

    async def _stream_with_files(self, prompt: Prompt) -> AsyncIterator[str | Completion]:
        turns = tuple([await self._read(turn) for turn in prompt.turns])
        inner = self._inner.stream(dataclasses.replace(prompt, turns=turns))
        async with contextlib.aclosing(inner) as items:  # type: ignore[type-var]
            async for item in items:
                yield item

    async def list_models(self) -> Sequence[ModelInfo]:
        return await self._inner.list_models()

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def _read(self, turn: ChatTurn) -> ChatTurn:
        if not turn.attachments:
            return turn
        texts: list[str] = []
        images: list[Image] = []
        for attachment in turn.attachments:
            data = b"".join([chunk async for chunk in self._store.get(attachment.id)])
            if attachment.content_type in PROMPT_IMAGE_TYPES:
                images.append(Image(attachment.content_type, data))
            else:
                texts.append(file_block(attachment, data.decode("utf-8", errors="replace")))
        content = "\n\n".join([*texts, turn.content])
        return ChatTurn(turn.role, content, images=(*turn.images, *images))


def file_block(attachment: Attachment, text: str) -> str:
    """A text file as the model reads it, named, before the message that carries it."""
    name = attachment.filename.replace('"', "'")
    return f'<file name="{name}" type="{attachment.content_type}">\n{text}\n</file>'
