"""The image template as one frozen, typed model.

Every apiVersion from 2019-05-01-preview to 2025-10-01, in every form users write (a bare
resource, an ARM deployment), is normalized into these classes by `kiln.template.load`. Nothing
below the loader sees raw dicts. Field names are Python spellings of the 2025-10-01 API; old
spellings (`replicationRegions`, `valid_exit_codes`, `imageVersionID`, `sourceURI`) are folded in
by the loader. Sequences are tuples and mappings are plain dicts that nobody mutates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

OnBuildError = Literal["cleanup", "abort"]
OsType = Literal["Linux", "Windows"]


# ---------------------------------------------------------------- source


@dataclass(frozen=True, kw_only=True)
class PlanInfo:
    plan_name: str
    plan_product: str
    plan_publisher: str


@dataclass(frozen=True, kw_only=True)
class PlatformImageSource:
    type: ClassVar[str] = "PlatformImage"
    publisher: str
    offer: str
    sku: str
    version: str = "latest"
    plan_info: PlanInfo | None = None


@dataclass(frozen=True, kw_only=True)
class ManagedImageSource:
    type: ClassVar[str] = "ManagedImage"
    image_id: str


@dataclass(frozen=True, kw_only=True)
class SharedImageVersionSource:
    type: ClassVar[str] = "SharedImageVersion"
    image_version_id: str


@dataclass(frozen=True, kw_only=True)
class IsoSource:
    """The preview API's ISO source (2019-05-01-preview): a live ISO, checksum mandatory."""

    type: ClassVar[str] = "ISO"
    source_uri: str
    sha256_checksum: str


Source = PlatformImageSource | ManagedImageSource | SharedImageVersionSource | IsoSource


# ---------------------------------------------------------------- customizers and in-VM validators


@dataclass(frozen=True, kw_only=True)
class ShellStep:
    type: ClassVar[str] = "Shell"
    name: str = ""
    script_uri: str | None = None
    inline: tuple[str, ...] | None = None
    sha256_checksum: str | None = None


@dataclass(frozen=True, kw_only=True)
class PowerShellStep:
    type: ClassVar[str] = "PowerShell"
    name: str = ""
    script_uri: str | None = None
    inline: tuple[str, ...] | None = None
    sha256_checksum: str | None = None
    run_elevated: bool = False
    run_as_system: bool = False
    valid_exit_codes: tuple[int, ...] = (0,)


@dataclass(frozen=True, kw_only=True)
class FileStep:
    type: ClassVar[str] = "File"
    name: str = ""
    source_uri: str
    destination: str
    sha256_checksum: str | None = None


@dataclass(frozen=True, kw_only=True)
class WindowsRestartStep:
    type: ClassVar[str] = "WindowsRestart"
    name: str = ""
    restart_command: str | None = None
    restart_check_command: str | None = None
    restart_timeout: str = "5m"


@dataclass(frozen=True, kw_only=True)
class WindowsUpdateStep:
    type: ClassVar[str] = "WindowsUpdate"
    name: str = ""
    search_criteria: str | None = None
    filters: tuple[str, ...] = ()
    update_limit: int = 0


Customizer = ShellStep | PowerShellStep | FileStep | WindowsRestartStep | WindowsUpdateStep
InVMValidator = ShellStep | PowerShellStep | FileStep
WINDOWS_ONLY_STEPS: tuple[str, ...] = ("WindowsRestart", "WindowsUpdate")


@dataclass(frozen=True, kw_only=True)
class Validate:
    continue_distribute_on_failure: bool = False
    source_validation_only: bool = False
    in_vm_validations: tuple[InVMValidator, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Optimize:
    vm_boot: Literal["Enabled", "Disabled"] | None = None
    workload: Literal["Enabled", "Disabled"] | None = None
    workload_script_uri: str | None = None
    workload_sha256_checksum: str | None = None


# ---------------------------------------------------------------- distribute


@dataclass(frozen=True, kw_only=True)
class TargetRegion:
    name: str
    replica_count: int = 1
    storage_account_type: str | None = None


@dataclass(frozen=True, kw_only=True)
class Versioning:
    scheme: Literal["Latest", "Source"]
    major: int = -1  # Latest only; -1 means the highest existing major


@dataclass(frozen=True, kw_only=True)
class ManagedImageTarget:
    type: ClassVar[str] = "ManagedImage"
    run_output_name: str
    artifact_tags: dict[str, str] = field(default_factory=dict)
    image_id: str
    location: str


@dataclass(frozen=True, kw_only=True)
class SharedImageTarget:
    type: ClassVar[str] = "SharedImage"
    run_output_name: str
    artifact_tags: dict[str, str] = field(default_factory=dict)
    gallery_image_id: str
    target_regions: tuple[TargetRegion, ...] = ()  # replicationRegions folds in here
    exclude_from_latest: bool = False
    storage_account_type: str | None = None
    versioning: Versioning | None = None
    replication_mode: Literal["Full", "Shallow"] | None = None


@dataclass(frozen=True, kw_only=True)
class VhdTarget:
    type: ClassVar[str] = "VHD"
    run_output_name: str
    artifact_tags: dict[str, str] = field(default_factory=dict)
    uri: str | None = None


DistributeTarget = ManagedImageTarget | SharedImageTarget | VhdTarget


# ---------------------------------------------------------------- the rest


@dataclass(frozen=True, kw_only=True)
class ErrorHandling:
    on_customizer_error: OnBuildError = "cleanup"
    on_validation_error: OnBuildError = "cleanup"


@dataclass(frozen=True, kw_only=True)
class VnetConfig:
    subnet_id: str | None = None
    container_instance_subnet_id: str | None = None
    proxy_vm_size: str | None = None


@dataclass(frozen=True, kw_only=True)
class VmProfile:
    vm_size: str | None = None
    os_disk_size_gb: int = 0  # 0: size from the content plus headroom
    user_assigned_identities: tuple[str, ...] = ()
    vnet_config: VnetConfig | None = None


@dataclass(frozen=True, kw_only=True)
class DataDisk:
    size_gb: int


@dataclass(frozen=True, kw_only=True)
class Identity:
    type: Literal["UserAssigned", "None"] = "None"
    user_assigned_identities: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class ImageTemplate:
    """One image template, as Azure would store it after accepting it."""

    name: str
    api_version: str
    location: str
    source: Source
    distribute: tuple[DistributeTarget, ...]
    customize: tuple[Customizer, ...] = ()
    validate: Validate = field(default_factory=Validate)
    optimize: Optimize | None = None
    error_handling: ErrorHandling = field(default_factory=ErrorHandling)
    build_timeout_in_minutes: int = 0  # 0 means 240
    vm_profile: VmProfile = field(default_factory=VmProfile)
    additional_data_disks: tuple[DataDisk, ...] = ()
    staging_resource_group: str | None = None
    auto_run: Literal["Enabled", "Disabled"] | None = None
    managed_resource_tags: dict[str, str] = field(default_factory=dict)
    identity: Identity = field(default_factory=Identity)
    tags: dict[str, str] = field(default_factory=dict)
    depends_on: tuple[str, ...] = ()
    # Where it came from, for error messages and run records (not part of equality).
    file: str = field(default="", compare=False)

    @property
    def timeout_minutes(self) -> int:
        return self.build_timeout_in_minutes or 240

    @property
    def os_type(self) -> OsType:
        """Linux unless the source is a Windows platform image (other sources: decided by the store)."""
        src = self.source
        if isinstance(src, PlatformImageSource) and is_windows_publisher(src.publisher, src.offer):
            return "Windows"
        return "Linux"


def is_windows_publisher(publisher: str, offer: str = "") -> bool:
    p, o = publisher.lower(), offer.lower()
    return p.startswith("microsoftwindows") or "windows" in o or (p == "microsoftvisualstudio") or (
        p == "microsoftsqlserver" and "ws" in o
    )
