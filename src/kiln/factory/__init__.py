"""The DevTest Labs image factory: golden images → factory lab → every lab in Labs.json.

    factory = load_factory(CONFIG_DIR, config)                   # kiln.factory.config
    labs = load_labs(CONFIG_DIR)       → what distribution reads # kiln.factory.config
    build_golden_images(factory, ...)  → BuiltGoldenImage records # kiln.factory.build
    save_images(store, lab, built, ...) → factory lab images     # kiln.factory.build
    distribute_images(...)             → every lab's images      # kiln.factory.distribute
    plan_retirement(...) / retire(...) → keep the newest N good  # kiln.factory.retention
    cleanup(...)                       → build leftovers, gc     # kiln.factory.retention
    run_factory(session, ...)          → all of the above, in order # kiln.factory.run

Labs and their custom images are catalog resources (kiln.store.labs); publishing into them is
kiln.distribute.labs.

The names below are imported on first use (PEP 562), not with the package: `kiln factory
distribute` needs neither the build pipeline nor the template compiler, and importing
`kiln.factory.distribute` runs this file first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kiln.ids import NULL_SUBSCRIPTION
from kiln.lazy import lazy_attributes

DEFAULT_FACTORY_LAB = f"/subscriptions/{NULL_SUBSCRIPTION}/resourceGroups/kiln-factory/providers/Microsoft.DevTestLab/labs/ImageFactory"

_WHERE = {
    "BuiltGoldenImage": "build", "build_golden_images": "build", "ensure_lab": "build", "save_images": "build",
    "unsaved_golden_images": "build",
    "Factory": "config", "FactoryLabs": "config", "GoldenImage": "config", "LabSpec": "config",
    "load_factory": "config", "load_labs": "config",
    "distribute_images": "distribute", "target_labs": "distribute",
    "cleanup": "retention", "plan_retirement": "retention", "retire": "retention",
    "FactorySession": "run", "run_factory": "run",
}

if TYPE_CHECKING:
    from kiln.factory.build import (
        BuiltGoldenImage,
        build_golden_images,
        ensure_lab,
        save_images,
        unsaved_golden_images,
    )
    from kiln.factory.config import Factory, FactoryLabs, GoldenImage, LabSpec, load_factory, load_labs
    from kiln.factory.distribute import distribute_images, target_labs
    from kiln.factory.retention import cleanup, plan_retirement, retire
    from kiln.factory.run import FactorySession, run_factory


__getattr__ = lazy_attributes(__name__, _WHERE)


__all__ = ["DEFAULT_FACTORY_LAB", "BuiltGoldenImage", "Factory", "FactoryLabs", "FactorySession", "GoldenImage",
           "LabSpec", "build_golden_images", "cleanup", "distribute_images", "ensure_lab", "load_factory", "load_labs",
           "plan_retirement", "retire", "run_factory", "save_images", "target_labs", "unsaved_golden_images"]
