"""The use cases as the app wires them (`service.wiring.use_cases`), over the in-memory fakes, with the short
intervals and small limits tests want."""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

from service.audio import NO_SYNTHESIZER, NO_TRANSCRIBER, Unconfigured
from service.pagination import PageTokens
from service.personas import PersonaCatalog
from service.ports import AttachmentStore, Notifications, Provider
from service.replies import ReplyOptions
from service.storage.notifications import LocalNotifications
from service.wiring import Options, UseCases, use_cases
from tests.fakes import FakeAttachmentStore, FakeClock, FakeStorage

QUICK = ReplyOptions(flush_interval=0.01, max_message_bytes=1000)


class Wire(Protocol):
    """The `wired` fixture (tests/unit/conftest.py): `wire` over the test's own storage and clock."""

    def __call__(self, provider: Provider, **options: Any) -> UseCases: ...


def wire(
    storage: FakeStorage,
    clock: FakeClock,
    provider: Provider,
    *,
    notifications: Notifications | None = None,
    attachment_store: AttachmentStore | None = None,
    replica_id: str = "replica-a",
    default_model: str = "scripted",
    replies: ReplyOptions = QUICK,
    max_message_bytes: int | None = None,  # replaces `replies.max_message_bytes` when given
    max_audio_bytes: int = 1024,
    **options: Any,
) -> UseCases:
    """`options` are the rest of `service.wiring.Options`; the replies' limits default to a 10 ms flush."""
    return use_cases(
        storage.unit_of_work,
        provider,
        clock=clock,
        personas=PersonaCatalog.load(),
        page_tokens=PageTokens(b"page secret"),
        notifications=notifications or LocalNotifications(),
        attachment_store=attachment_store or FakeAttachmentStore(),
        transcriber=Unconfigured(NO_TRANSCRIBER),
        synthesizer=Unconfigured(NO_SYNTHESIZER),
        options=Options(
            replica_id=replica_id,
            default_model=default_model,
            replies=replies
            if max_message_bytes is None
            else dataclasses.replace(replies, max_message_bytes=max_message_bytes),
            max_audio_bytes=max_audio_bytes,
            **options,
        ),
    )
