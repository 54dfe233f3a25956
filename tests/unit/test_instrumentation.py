"""Library instrumentation (SQL and HTTP client spans) is installed only when tracing is on: with tracing off,
the instrumentation would still parse every statement and make and drop a span per statement and per request.
Each case runs in a process of its own, since tracer providers and instrumentation are process-global."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PROBE = """
import sys
from opentelemetry import trace
from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
from service import telemetry
from service.app import build
from service.settings import Settings

if sys.argv[1] == "on":
    trace.set_tracer_provider(telemetry.tracer_provider())
deps = build(Settings(database_url=sys.argv[2], llm_provider="fake"))
engine = deps.database.engine.sync_engine
print(telemetry.tracing_enabled(), len(engine.dispatch.before_cursor_execute) > 0,
      AioHttpClientInstrumentor().is_instrumented_by_opentelemetry)
"""


@pytest.mark.parametrize(("tracing", "expected"), [("off", "False False False"), ("on", "True True True")])
def test_libraries_are_instrumented_only_when_tracing_is_on(tracing: str, expected: str, tmp_path: Path) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}"
    done = subprocess.run(
        [sys.executable, "-c", PROBE, tracing, database], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == expected
