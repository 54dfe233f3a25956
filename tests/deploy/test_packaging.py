"""The three distributions: the stubs (`chat`) belong to chat-service-protos alone, so installing or removing the
server or the client never takes them from the other."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    out = tmp_path_factory.mktemp("wheels")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir", str(out),
         str(ROOT / "generated"), str(ROOT), str(ROOT / "clients" / "python")],
        check=True,
        capture_output=True,
        timeout=240,
    )  # fmt: skip
    found = {}
    for wheel in out.glob("*.whl"):
        name = wheel.name.split("-")[0]
        with zipfile.ZipFile(wheel) as archive:
            found[name] = {entry.split("/")[0] for entry in archive.namelist() if not entry.split("/")[0].endswith(
                (".dist-info", ".data"))}  # fmt: skip
    return found


def test_only_the_protos_distribution_holds_the_stubs(wheels: dict[str, set[str]]) -> None:
    assert wheels == {
        "chat_service_protos": {"chat"},
        "chat_service": {"service"},
        "chat_service_client": {"chat_client"},
    }


def test_the_server_and_the_client_depend_on_the_protos(wheels: dict[str, set[str]]) -> None:
    for project in (ROOT / "pyproject.toml", ROOT / "clients" / "python" / "pyproject.toml"):
        assert '"chat-service-protos==0.1.0"' in project.read_text()
