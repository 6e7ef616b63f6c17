"""Fixtures of the API tests: a module's own `kiln serve` (see kilnserve.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kilnserve import Server, start_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_server(tmp_path_factory.mktemp("serve") / "home")
    yield s
    s.stop()
