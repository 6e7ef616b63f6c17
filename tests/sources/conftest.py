"""Fixtures for the sources tests: the shared Debian 12 root (see debian_root.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from debian_root import CachedRoot, bootstrap_debian12, fresh_copy


@pytest.fixture(scope="session")
def debian12(tmp_path_factory: pytest.TempPathFactory) -> CachedRoot:
    return bootstrap_debian12(tmp_path_factory.mktemp("debian12"))


@pytest.fixture
def fresh_root(debian12: CachedRoot, tmp_path: Path) -> Path:
    return fresh_copy(debian12, tmp_path / "root")
