"""Baseline: the schema kiln's hand-written SQLite migrations had reached (user_version 7).

Nothing to do here: a catalog arrives at this revision either built from kiln.store.schema (which
declares exactly these tables) or made by the old list (kiln.store.legacy) and stamped.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass
