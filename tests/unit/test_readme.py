"""The README's configuration table stays true to the settings."""

from __future__ import annotations

from pathlib import Path

from service.settings import Settings

README = Path(__file__).parents[2] / "README.md"


def test_every_setting_is_documented() -> None:
    text = README.read_text()
    missing = [f"CHAT_{name.upper()}" for name in Settings.model_fields if f"`CHAT_{name.upper()}`" not in text]
    assert missing == []
