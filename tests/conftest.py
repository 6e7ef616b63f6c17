"""Shared test fixtures: every test gets its own state home; nothing touches the user's."""

from __future__ import annotations

from pathlib import Path

import pytest

from corpus import REPO, conformance

__all__ = ["REPO", "conformance"]


@pytest.fixture
def kiln_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "kiln-home"
    home.mkdir()
    monkeypatch.setenv("KILN_HOME", str(home))
    return home


@pytest.fixture
def corpus() -> Path:
    """The conformance corpus folder (see tests/corpus.py: skipped, or failed under CI, without it)."""
    return conformance()
