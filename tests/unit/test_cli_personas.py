"""A bad personas file stops `chat-service serve` at start-up with one clear log line, not a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service import cli


def test_serve_refuses_a_bad_personas_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    personas = tmp_path / "personas.toml"
    personas.write_text('[personas.coach]\ndisplay_name = "Coach"\n', encoding="utf-8")
    monkeypatch.setenv("CHAT_PERSONAS_FILE", str(personas))
    monkeypatch.setenv("CHAT_LLM_PROVIDER", "fake")
    monkeypatch.setenv("CHAT_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}")

    status = cli.main(["serve", "--listen", "127.0.0.1:0"])

    assert status == 2
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr
    [error] = [line for line in map(json.loads, stderr.splitlines()) if line["level"] == "error"]
    assert error["event"].startswith("invalid personas file: ")
    assert error["event"].endswith("persona 'coach': 'description' must be a non-empty string")
    assert "CHAT_PERSONAS_FILE" in error["hint"]
