"""The whole service as a state machine (tests/integration/service_model.py): several users on channels of their own,
replies streamed, retried, resumed, cancelled and deleted, conversations shared and deleted, coaching sessions
turned, dropped and rejoined, clients giving up at random points and deletes raced against everything — over a real
replica on SQLite and on Postgres, the invariants checked against the stored rows after every step."""

from __future__ import annotations

import os
import time
from collections.abc import Coroutine
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test
from sqlalchemy.ext.asyncio import create_async_engine

from service.llm.fake import FakeProvider
from tests.integration.harness import running_replica, settings_for
from tests.integration.hostile import LoopThread
from tests.integration.service_model import Counts, Rows, ServiceMachine

pytestmark = pytest.mark.timeout(600)  # a failure is shrunk for up to 5 minutes

# CHAT_TEST_STATE_EXAMPLES searches harder (e.g. 300, a few minutes per database); the default keeps ~40 s each.
EXAMPLES, STEPS = int(os.environ.get("CHAT_TEST_STATE_EXAMPLES", "40")), 30
STEP_BOUND = 60.0  # seconds: a step (its calls are bounded themselves) that takes longer is a hang


def test_the_service_keeps_its_invariants_over_any_sequence_of_rpcs(database_url: str) -> None:
    runner = LoopThread()
    # Paced (12 tokens at 150 tokens/s: a reply takes ~80 ms), so that clients give up and deletes land mid-reply.
    provider = FakeProvider(tokens_per_second=150, reply_tokens=12)
    replica_settings = settings_for(
        database_url,
        rate_limit_per_minute=0,
        max_concurrent_streams=0,
        speech_provider="none",
        coach_classify_finish=False,
        lease_seconds=30.0,  # no sweeper ends an orphaned reply within the test: the invariant must see it
    )
    replica_context = running_replica(replica_settings, provider)
    replica = runner.run(replica_context.__aenter__())
    options = {"connect_args": {"timeout": 10}} if database_url.startswith("sqlite") else {}
    rows = Rows(create_async_engine(database_url, **options))
    counts = Counts()
    began = time.monotonic()
    try:

        def run(coroutine: Coroutine[Any, Any, Any]) -> Any:
            return runner.run(coroutine, STEP_BOUND)

        run_state_machine_as_test(
            lambda: ServiceMachine(replica, rows, run, counts),
            settings=settings(
                max_examples=EXAMPLES,
                stateful_step_count=STEPS,
                deadline=None,
                suppress_health_check=list(HealthCheck),
            ),
        )
    finally:
        runner.run(rows.engine.dispose())
        runner.run(replica_context.__aexit__(None, None, None))
        runner.close()
    print(
        f"\nstate machine: {counts.examples} examples, {counts.steps} steps, {counts.calls} client calls "
        f"in {time.monotonic() - began:.1f} s; statuses {dict(sorted(counts.statuses.items()))}; "
        f"rules {dict(sorted(counts.rules.items()))}"
    )
    assert counts.examples >= EXAMPLES and counts.steps >= EXAMPLES
