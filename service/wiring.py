"""The one place that builds the use cases from their ports: the app (service/app.py), the CLI and the tests
all call `use_cases` (or `api_keys`, for the CLI that needs nothing else), so they are wired alike."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from service.attachments import Attachments
from service.attachments.prompts import FileReadingProvider
from service.auth.api_keys import REVOKED_CHANNEL, ApiKeys
from service.branches import Branches
from service.chat import Conversations, ModelCatalog
from service.coaching.classifier import FinishClassifier
from service.coaching.coach import Coaching
from service.coaching.session_records import SessionRecords
from service.coaching.voice import Voice
from service.domain.coaching import SessionLimits
from service.pagination import PageTokens
from service.personas import PersonaCatalog
from service.ports import (
    AttachmentStore,
    ModelCallObserver,
    Notifications,
    Provider,
    Synthesizer,
    Transcriber,
    UnitOfWorkFactory,
)
from service.replies import Replies, ReplyOptions
from service.settings import Settings
from service.sharing import Sharing


@dataclass(frozen=True, slots=True)
class Options:
    """What the use cases take from the settings (`from_settings`); tests set the few they care about."""

    replica_id: str
    default_model: str
    replies: ReplyOptions = field(default_factory=ReplyOptions)  # max_message_bytes: every use case's limit
    max_attachment_bytes: int = 5 * 1024 * 1024
    max_audio_bytes: int = 3 * 1024 * 1024
    coaching_limits: SessionLimits = field(default_factory=SessionLimits)  # of sessions whose `start` sets none
    classify_finish: bool = True
    key_cache_needs_bus: bool = False  # trust cached keys only while revocations can reach this replica

    @classmethod
    def from_settings(cls, settings: Settings) -> Options:
        return cls(
            replica_id=settings.resolved_replica_id,
            default_model=settings.resolved_model,
            replies=ReplyOptions(
                max_message_bytes=settings.max_message_bytes,
                max_reply_tokens=settings.max_reply_tokens,
                history_token_budget=settings.history_token_budget,
                history_max_messages=settings.history_max_messages,
                flush_interval=settings.flush_interval_ms / 1000,
                lease_seconds=settings.lease_seconds,
                provider_attempts=settings.llm_retry_attempts,
                max_reply_chars=settings.max_reply_chars,
                max_model_streams=settings.llm_max_streams,
                max_continuations=settings.max_continuations,
            ),
            max_attachment_bytes=settings.max_attachment_bytes,
            max_audio_bytes=settings.max_audio_bytes,
            coaching_limits=SessionLimits(
                settings.coach_max_turns, timedelta(seconds=settings.coach_max_duration_seconds)
            ),
            classify_finish=settings.coach_classify_finish,
            key_cache_needs_bus=not settings.is_sqlite,
        )


@dataclass(frozen=True, slots=True)
class UseCases:
    replies: Replies
    conversations: Conversations
    coaching: Coaching
    session_records: SessionRecords  # the coaching sessions' records, which `coaching` works through
    attachments: Attachments
    sharing: Sharing
    branches: Branches
    api_keys: ApiKeys


def use_cases(
    uow: UnitOfWorkFactory,
    provider: Provider,
    *,
    clock: Callable[[], datetime],
    personas: PersonaCatalog,
    page_tokens: PageTokens,
    notifications: Notifications,
    attachment_store: AttachmentStore,
    transcriber: Transcriber,
    synthesizer: Synthesizer,
    options: Options,
    model_calls: ModelCallObserver | None = None,
) -> UseCases:
    """Every use case, over one unit-of-work factory, one provider and one clock."""
    replies = Replies(
        uow,
        FileReadingProvider(provider, attachment_store),  # replies read the files uploads wrote
        personas,
        replica_id=options.replica_id,
        clock=clock,
        notifications=notifications,
        options=options.replies,
        model_calls=model_calls,
    )
    models = ModelCatalog(provider, default_model=options.default_model)
    conversations = Conversations(
        uow, replies, models, personas, page_tokens, clock=clock, max_prompt_bytes=options.replies.max_message_bytes
    )
    session_records = SessionRecords(uow, conversations, personas, clock=clock, default_limits=options.coaching_limits)
    coaching = Coaching(
        session_records,
        replies,
        Voice(
            transcriber,
            synthesizer,
            max_audio_bytes=options.max_audio_bytes,
            max_message_bytes=options.replies.max_message_bytes,
        ),
        personas,
        page_tokens,
        clock=clock,
        classifier=FinishClassifier(provider, observer=model_calls) if options.classify_finish else None,
    )
    return UseCases(
        replies,
        conversations,
        coaching,
        session_records,
        Attachments(uow, attachment_store, clock=clock, max_bytes=options.max_attachment_bytes),
        Sharing(uow, page_tokens, clock=clock),
        Branches(uow, replies, page_tokens, clock=clock),
        api_keys(uow, page_tokens, clock=clock, notifications=notifications, needs_bus=options.key_cache_needs_bus),
    )


def api_keys(
    uow: UnitOfWorkFactory,
    page_tokens: PageTokens,
    *,
    clock: Callable[[], datetime],
    notifications: Notifications | None = None,
    needs_bus: bool = False,
) -> ApiKeys:
    """API keys; with `notifications`, a revocation is announced to every replica (this one included), which
    forgets the key at once, and with `needs_bus` the key cache is not trusted while that link is down
    (Postgres notifications). Without `notifications` (the CLI) nothing is announced."""
    if notifications is None:
        return ApiKeys(uow, page_tokens, clock=clock)
    bus = notifications
    keys = ApiKeys(
        uow,
        page_tokens,
        clock=clock,
        announce=lambda key_id: bus.publish(REVOKED_CHANNEL, key_id),
        cache_trusted=(lambda: bus.connected) if needs_bus else (lambda: True),
    )
    bus.subscribe(REVOKED_CHANNEL, keys.forget)
    return keys
