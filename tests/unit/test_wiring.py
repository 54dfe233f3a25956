"""The one wiring of the use cases (`service.wiring`): what it takes from the settings, and the API keys' link to
the other replicas."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from service.auth.api_keys import REVOKED_CHANNEL
from service.domain.coaching import SessionLimits
from service.settings import Settings
from service.storage.notifications import LocalNotifications
from service.wiring import Options
from tests.fakes import ScriptedProvider
from tests.wired import Wire


def test_options_take_every_use_case_setting() -> None:
    settings = Settings(
        database_url="postgresql+asyncpg://db/chat",
        replica_id="replica-7",
        llm_provider="fake",
        default_model="m",
        max_message_bytes=2000,
        max_attachment_bytes=3000,
        max_audio_bytes=4000,
        flush_interval_ms=50,
        llm_retry_attempts=5,
        coach_max_turns=6,
        coach_max_duration_seconds=90,
        coach_classify_finish=False,
    )

    options = Options.from_settings(settings)

    assert (options.replica_id, options.default_model) == ("replica-7", "m")
    assert (options.replies.max_message_bytes, options.max_attachment_bytes, options.max_audio_bytes) == (
        2000,
        3000,
        4000,
    )
    assert (options.replies.flush_interval, options.replies.provider_attempts) == (0.05, 5)
    assert options.coaching_limits == SessionLimits(6, timedelta(seconds=90))
    assert options.classify_finish is False
    assert options.key_cache_needs_bus is True  # Postgres: cached keys are trusted only while notified
    assert Options.from_settings(Settings(database_url="sqlite+aiosqlite:///x.db")).key_cache_needs_bus is False


async def test_api_keys_announce_a_revocation_and_forget_the_announced_ones(wired: Wire) -> None:
    bus = LocalNotifications()
    keys = wired(ScriptedProvider(), notifications=bus).api_keys
    key, secret = await keys.create("alice")
    assert (await keys.authenticate(secret)).user_id == "alice"
    heard = asyncio.Event()
    bus.subscribe(REVOKED_CHANNEL, lambda key_id: heard.set() if key_id == key.id else None)

    await keys.revoke(key.id)
    async with asyncio.timeout(5):
        await heard.wait()

    assert keys.revocations == 2  # its own, and the announcement it heard (`forget`), as another replica would
