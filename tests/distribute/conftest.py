"""Fixtures for the distribute tests: the store tests' disks and helpers."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "store"))
from store_helpers import azurite, disk_dir, other_disk, raw_disk  # noqa: E402, F401
