"""Package attributes imported on first use (PEP 562's module `__getattr__`).

A package whose `__init__` names its public functions can make `import kiln.factory.distribute`
cost nothing more than that module: the names live in a table (name → submodule) and are imported
when first read, then cached in the package's namespace.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(package: str, where: Mapping[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` for `package`: `where[name]` is the module that defines `name`, a
    submodule's own name (`"labs"`) or, for a module elsewhere, its full name (`"kiln.fetch"`)."""

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module if "." in module else f"{package}.{module}"), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
