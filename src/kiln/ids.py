"""Azure resource IDs, parsed once and compared case-insensitively.

kiln names every resource as Azure does, so templates port unchanged:

    /subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/images/{name}
    /subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/galleries/{g}/images/{def}/versions/{x.y.z}
    /subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.DevTestLab/labs/{lab}/customimages/{name}
    /subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.VirtualMachineImages/imageTemplates/{t}/runOutputs/{r}

A `ResourceId` keeps the user's spelling for display and a lower-cased `key` for comparison and
catalog lookups, as Azure treats ids case-insensitively.
"""

from __future__ import annotations

from dataclasses import dataclass

from kiln.errors import InvalidInput

IMAGE = "Microsoft.Compute/images"
GALLERY = "Microsoft.Compute/galleries"
GALLERY_IMAGE = "Microsoft.Compute/galleries/images"
GALLERY_IMAGE_VERSION = "Microsoft.Compute/galleries/images/versions"
LAB = "Microsoft.DevTestLab/labs"
LAB_CUSTOM_IMAGE = "Microsoft.DevTestLab/labs/customimages"
IMAGE_TEMPLATE = "Microsoft.VirtualMachineImages/imageTemplates"
RUN_OUTPUT = "Microsoft.VirtualMachineImages/imageTemplates/runOutputs"
USER_ASSIGNED_IDENTITY = "Microsoft.ManagedIdentity/userAssignedIdentities"

# The subscription of resources whose owner gave none (the factory lab, a template with no target id):
# Azure's all-zero GUID, which no real subscription has.
NULL_SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"

_EXAMPLES = {
    IMAGE: "/subscriptions/SUB/resourceGroups/RG/providers/Microsoft.Compute/images/NAME",
    GALLERY: "/subscriptions/SUB/resourceGroups/RG/providers/Microsoft.Compute/galleries/GALLERY",
    GALLERY_IMAGE: "/subscriptions/SUB/resourceGroups/RG/providers/Microsoft.Compute/galleries/GALLERY/images/DEFINITION",
    GALLERY_IMAGE_VERSION: "/subscriptions/SUB/resourceGroups/RG/providers/Microsoft.Compute/galleries/GALLERY/images/DEFINITION/versions/1.0.0",
    LAB: "/subscriptions/SUB/resourceGroups/RG/providers/Microsoft.DevTestLab/labs/LAB",
    LAB_CUSTOM_IMAGE: "/subscriptions/SUB/resourceGroups/RG/providers/Microsoft.DevTestLab/labs/LAB/customimages/NAME",
    IMAGE_TEMPLATE: "/subscriptions/SUB/resourceGroups/RG/providers/Microsoft.VirtualMachineImages/imageTemplates/NAME",
    RUN_OUTPUT: "/subscriptions/SUB/resourceGroups/RG/providers/Microsoft.VirtualMachineImages/imageTemplates/NAME/runOutputs/OUT",
    USER_ASSIGNED_IDENTITY: "/subscriptions/SUB/resourceGroups/RG/providers/Microsoft.ManagedIdentity/userAssignedIdentities/NAME",
}


@dataclass(frozen=True)
class ResourceId:
    subscription: str
    resource_group: str
    namespace: str  # e.g. Microsoft.Compute
    types: tuple[str, ...]  # e.g. ("galleries", "images", "versions")
    names: tuple[str, ...]  # e.g. ("g", "def", "1.0.0")

    @property
    def kind(self) -> str:
        return "/".join((self.namespace, *self.types))

    @property
    def name(self) -> str:
        return self.names[-1]

    @property
    def key(self) -> str:
        """Lower-cased canonical form: the identity used for comparison and storage lookups."""
        return str(self).lower()

    def parent(self) -> ResourceId:
        if len(self.types) < 2:
            raise ValueError(f"{self} has no parent resource")
        return ResourceId(self.subscription, self.resource_group, self.namespace, self.types[:-1], self.names[:-1])

    def child(self, type_: str, name: str) -> ResourceId:
        return ResourceId(
            self.subscription, self.resource_group, self.namespace, (*self.types, type_), (*self.names, name)
        )

    def __str__(self) -> str:
        tail = "/".join(f"{t}/{n}" for t, n in zip(self.types, self.names, strict=True))
        return f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}/providers/{self.namespace}/{tail}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ResourceId) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)


def try_parse(text: str) -> ResourceId | None:
    """Parse an ARM resource id, or return None if it is not one."""
    if not isinstance(text, str):
        return None
    parts = text.strip().split("/")
    # ['', 'subscriptions', sub, 'resourceGroups', rg, 'providers', ns, type, name, (type, name)*]
    if len(parts) < 9 or parts[0] != "" or (len(parts) - 7) % 2 != 0:
        return None
    if parts[1].lower() != "subscriptions" or parts[3].lower() != "resourcegroups" or parts[5].lower() != "providers":
        return None
    if any(not p or p != p.strip() for p in parts[1:]):
        return None
    rest = parts[7:]
    types = tuple(rest[0::2])
    names = tuple(rest[1::2])
    return ResourceId(parts[2], parts[4], parts[6], types, names)


def parse(text: str, kind: str | None = None, *, what: str = "resource id", path: str = "", file: str = "") -> ResourceId:
    """Parse an id, optionally requiring a resource kind (compared case-insensitively)."""
    rid = try_parse(text)
    if rid is None or (kind is not None and rid.kind.lower() != kind.lower()):
        example = _EXAMPLES.get(kind or "", _EXAMPLES[IMAGE])
        got = f"{rid.kind} id" if rid is not None else "not a resource id"
        raise InvalidInput(
            f"{what} {text!r} is malformed ({got})",
            hint=f"expected the form {example}",
            path=path,
            file=file,
        )
    return rid


def example(kind: str) -> str:
    return _EXAMPLES[kind]
