"""An image template resource's body (as a client PUTs it) to kiln's model, through kiln's own loader.

The body is wrapped into the resource form `kiln validate` reads, so the API finds exactly the
problems the CLI finds, at the same JSON paths (`.properties.source.type`), plus one rule of its
own: local paths only inside the folders config.toml allows (kiln.api.settings).
"""

from __future__ import annotations

from typing import Any

from kiln import ids
from kiln.api.settings import local_path_problems, local_roots
from kiln.config import Config
from kiln.errors import ValidationFailed
from kiln.ids import ResourceId
from kiln.template.model import ImageTemplate

API_VERSION = "2025-10-01"  # azure-mgmt-imagebuilder 2.0.0
# What a client may send besides `properties`; the rest of a GET's top level is read-only.
WRITABLE = ("location", "tags", "identity", "properties")


def document(body: dict[str, Any], rid: ResourceId) -> dict[str, Any]:
    doc = {"type": ids.IMAGE_TEMPLATE, "apiVersion": API_VERSION, "name": rid.name}
    doc.update({k: body[k] for k in WRITABLE if k in body})
    return doc


def load_body(body: dict[str, Any], rid: ResourceId, config: Config) -> ImageTemplate:
    """The body as kiln's model (raises ValidationFailed with every problem, local paths included)."""
    from kiln.template.load import load_template_data

    problems = local_path_problems({k: body.get(k) for k in ("properties",)}, local_roots(config))
    try:
        (template,) = load_template_data(document(body, rid), config=config, name_hint=rid.name)
    except ValidationFailed as e:
        raise ValidationFailed([*problems, *e.problems]) from None
    if problems:
        raise ValidationFailed(problems)
    return template
