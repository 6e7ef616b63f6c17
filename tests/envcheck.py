"""Missing prerequisites: a skip on a developer's machine, a failure in CI.

CI (CI=true) runs scripts/setup first, so a missing tool there means the setup is broken, and a
skip would hide it behind a green run."""

from __future__ import annotations

import os

import pytest


def unavailable(why: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI must have this: {why}")
    pytest.skip(why)
