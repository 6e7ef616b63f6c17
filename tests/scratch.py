"""Big test scratch space that goes when its fixture ends, unless a test failed meanwhile.

pytest removes the directories of passing tests, but those a module- or session-scoped fixture
made (built images, a cluster's homes and blobs: gigabytes each) stay until the whole run ends,
and a full run's would add up to more than the disk of a CI machine has free.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


def discard_if_passed(request: pytest.FixtureRequest, path: Path) -> None:
    """Remove `path` when `request`'s fixture is torn down, if no test failed since this call."""
    failed = request.session.testsfailed

    def finish() -> None:
        if request.session.testsfailed == failed:
            shutil.rmtree(path, ignore_errors=True)

    request.addfinalizer(finish)
