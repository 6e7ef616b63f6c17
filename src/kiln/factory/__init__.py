"""The DevTest Labs image factory: golden images → factory lab → every lab in Labs.json.

    factory = load_factory(CONFIG_DIR, config)                   # kiln.factory.config
    labs = load_labs(CONFIG_DIR)       → what distribution reads # kiln.factory.config
    build_golden_images(factory, ...)  → staging images          # kiln.factory.build
    save_images(store, factory_lab, ...) → factory lab images    # kiln.factory.build
    distribute_images(...)             → every lab's images      # kiln.factory.distribute
    plan_retirement(...) / retire(...) → keep the newest N good  # kiln.factory.retire
    cleanup(...)                       → build leftovers, gc     # kiln.factory.retire

Labs and their custom images are catalog resources (kiln.store.labs).

The names below are imported on first use (PEP 562), not with the package: `kiln factory
distribute` needs neither the build pipeline nor the template compiler, and importing
`kiln.factory.distribute` runs this file first. (`retire` names both a module and its function:
once the module is imported on its own, `kiln.factory.retire` is the module until a name of it is
asked for here; `from kiln.factory.retire import retire` is always the function.)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

DEFAULT_FACTORY_LAB = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/kiln-factory/providers/Microsoft.DevTestLab/labs/ImageFactory"

_WHERE = {
    "build_golden_images": "build", "ensure_lab": "build", "save_images": "build",
    "Factory": "config", "FactoryLabs": "config", "GoldenImage": "config", "LabSpec": "config",
    "load_factory": "config", "load_labs": "config",
    "distribute_images": "distribute", "target_labs": "distribute",
    "cleanup": "retire", "plan_retirement": "retire", "retire": "retire",
}

if TYPE_CHECKING:
    from kiln.factory.build import build_golden_images, ensure_lab, save_images
    from kiln.factory.config import Factory, FactoryLabs, GoldenImage, LabSpec, load_factory, load_labs
    from kiln.factory.distribute import distribute_images, target_labs
    from kiln.factory.retire import cleanup, plan_retirement, retire


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    loaded = importlib.import_module(f"kiln.factory.{module}")
    # Bind every name of that module now: importing kiln.factory.retire has just bound the
    # submodule as this package's `retire`, and the function of that name must win, as it did
    # when this file imported everything eagerly.
    for other, where in _WHERE.items():
        if where == module:
            globals()[other] = getattr(loaded, other)
    return globals()[name]


__all__ = ["DEFAULT_FACTORY_LAB", "Factory", "FactoryLabs", "GoldenImage", "LabSpec", "build_golden_images", "cleanup",
           "distribute_images", "ensure_lab", "load_factory", "load_labs", "plan_retirement", "retire", "save_images",
           "target_labs"]
