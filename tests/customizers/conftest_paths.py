"""Paths the customizer tests read (the conformance corpus beside the repository)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONFORMANCE = REPO.parent / "shared" / "conformance"
