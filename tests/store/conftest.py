"""Fixtures for the store's tests (defined in store_helpers, shared with tests/distribute)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from store_helpers import azurite, disk_dir, load, other_disk, raw_disk  # noqa: E402, F401
