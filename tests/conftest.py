"""Shared test fixtures: every test gets its own state home; nothing touches the user's."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CONFORMANCE = REPO.parent / "shared" / "conformance"


@pytest.fixture
def kiln_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "kiln-home"
    home.mkdir()
    monkeypatch.setenv("KILN_HOME", str(home))
    return home
