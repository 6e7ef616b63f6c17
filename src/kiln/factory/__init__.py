"""The DevTest Labs image factory: golden images → factory lab → every lab in Labs.json.

    factory = load_factory(CONFIG_DIR, config)                   # kiln.factory.config
    build_golden_images(factory, ...)  → staging images          # kiln.factory.build
    save_images(store, factory_lab, ...) → factory lab images    # kiln.factory.build
    distribute_images(...)             → every lab's images      # kiln.factory.distribute
    plan_retirement(...) / retire(...) → keep the newest N good  # kiln.factory.retire
    cleanup(...)                       → build leftovers, gc     # kiln.factory.retire

Labs and their custom images are catalog resources (kiln.store.labs).
"""

from kiln.factory.build import build_golden_images, ensure_lab, save_images
from kiln.factory.config import Factory, GoldenImage, LabSpec, load_factory
from kiln.factory.distribute import distribute_images, target_labs
from kiln.factory.retire import cleanup, plan_retirement, retire

DEFAULT_FACTORY_LAB = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/kiln-factory/providers/Microsoft.DevTestLab/labs/ImageFactory"

__all__ = ["DEFAULT_FACTORY_LAB", "Factory", "GoldenImage", "LabSpec", "build_golden_images", "cleanup", "distribute_images",
           "ensure_lab", "load_factory", "plan_retirement", "retire", "save_images", "target_labs"]
