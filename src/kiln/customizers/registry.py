"""Every step type, registered: importing this module fills `base.REGISTRY`.

It is cheap (schemas and functions; no sandbox, no HTTP client), so the template loader imports it
to build its schema. The import order is AIB's order of the types, which the template schema's
lists of allowed types (and their hints) keep.
"""

from __future__ import annotations

# isort: off
from . import shell, powershell, file, windows  # noqa: F401  (each registers its types)
# isort: on
from .base import REGISTRY, CustomizerType


def step_types() -> tuple[CustomizerType, ...]:
    """The types a template's `customize` list takes."""
    return tuple(REGISTRY.values())


def validator_types() -> tuple[CustomizerType, ...]:
    """The types `inVMValidations` takes: those that can run in a booted guest."""
    return tuple(kind for kind in REGISTRY.values() if kind.guest is not None)
