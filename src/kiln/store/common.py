"""Small shared pieces of the catalog's resources: enumerations, validation, JSON columns."""

from __future__ import annotations

import json
import os
import secrets

from kiln.errors import InvalidInput

OS_TYPES = ("Linux", "Windows")
OS_STATES = ("Generalized", "Specialized")
HYPER_V_GENERATIONS = ("V1", "V2")


def choice(value: str, allowed: tuple[str, ...], what: str, path: str = "") -> str:
    """`value` spelled as in `allowed` (matched case-insensitively, as Azure does), else InvalidInput."""
    for a in allowed:
        if a.lower() == str(value).lower():
            return a
    raise InvalidInput(f"{what} {value!r} is not valid", path=path, hint=f"use one of: {', '.join(allowed)}")


def new_holder(kind: str) -> str:
    """A lease holder name for one operation of this process."""
    return f"{kind}:{os.getpid()}:{secrets.token_hex(4)}"


def dumps(value: object) -> str:
    return json.dumps(value, sort_keys=True)


def join_generations(generations: tuple[str, ...]) -> str:
    """The boot_generations column: "V1,V2", "V2", or "" (not known: a row from before it existed)."""
    return ",".join(g for g in HYPER_V_GENERATIONS if g in generations)


def split_generations(column: str) -> tuple[str, ...]:
    return tuple(g for g in (column or "").split(",") if g)
