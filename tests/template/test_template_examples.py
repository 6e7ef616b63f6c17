"""The shipped examples say what the README promises: Debian 12 to a managed image, a gallery, a VHD."""

from __future__ import annotations

from template_support import EXAMPLES

from kiln import ids
from kiln.template import dump_template, load_template
from kiln.template.model import (
    ManagedImageTarget,
    PlatformImageSource,
    SharedImageTarget,
    ShellStep,
    VhdTarget,
)


def _one(name: str):
    (t,) = load_template(EXAMPLES / name)
    assert load_template(EXAMPLES / name) == (t,)
    assert isinstance(t.source, PlatformImageSource)
    assert (t.source.publisher, t.source.offer, t.source.sku, t.source.version) == ("Debian", "debian-12", "12-gen2",
                                                                                   "latest")
    assert t.location == "westus2" and t.os_type == "Linux"
    assert all(isinstance(c, ShellStep) and c.inline for c in t.customize)
    (check,) = t.validate.in_vm_validations
    assert isinstance(check, ShellStep) and any("/etc/kiln/example-marker" in line for line in check.inline)
    assert dump_template(t)["properties"]["distribute"]
    return t


def test_managed_image_example() -> None:
    (target,) = _one("debian12-managed-image.json").distribute
    assert isinstance(target, ManagedImageTarget)
    rid = ids.parse(target.image_id, ids.IMAGE)
    assert (rid.subscription, rid.resource_group) == ("00000000-0000-0000-0000-000000000000", "kiln-examples")


def test_gallery_example() -> None:
    (target,) = _one("debian12-gallery.json").distribute
    assert isinstance(target, SharedImageTarget)
    ids.parse(target.gallery_image_id, ids.GALLERY_IMAGE)
    assert [r.name for r in target.target_regions] == ["westus2", "westeurope"]
    assert target.versioning is not None and target.versioning.scheme == "Latest"


def test_vhd_example() -> None:
    (target,) = _one("debian12-vhd.json").distribute
    assert isinstance(target, VhdTarget) and target.uri is None
