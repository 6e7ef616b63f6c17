"""The model -> an image template resource in the 2025-10-01 REST shape.

`load_template_data(dump_template(t))` gives back `t`: this is how kiln stores a template it
accepted (run records, the catalog) and how `kiln validate --json` could show what it understood.
Defaults are written out only where leaving them out would change what loads back.
"""

from __future__ import annotations

from typing import Any

from kiln.template import model as m

RESOURCE_TYPE = "Microsoft.VirtualMachineImages/imageTemplates"


def _put(d: dict[str, Any], key: str, value: Any) -> None:
    if value not in (None, "", (), {}, []):
        d[key] = value


def _source(s: m.Source) -> dict[str, Any]:
    d: dict[str, Any] = {"type": s.type}
    if isinstance(s, m.PlatformImageSource):
        d.update(publisher=s.publisher, offer=s.offer, sku=s.sku, version=s.version)
        if s.plan_info:
            d["planInfo"] = {"planName": s.plan_info.plan_name, "planProduct": s.plan_info.plan_product,
                             "planPublisher": s.plan_info.plan_publisher}
    elif isinstance(s, m.ManagedImageSource):
        d["imageId"] = s.image_id
    elif isinstance(s, m.SharedImageVersionSource):
        d["imageVersionId"] = s.image_version_id
    else:
        d.update(sourceUri=s.source_uri, sha256Checksum=s.sha256_checksum)
    return d


def _step(s: m.Customizer) -> dict[str, Any]:
    d: dict[str, Any] = {"type": s.type}
    _put(d, "name", s.name)
    if isinstance(s, m.ShellStep | m.PowerShellStep):
        _put(d, "scriptUri", s.script_uri)
        if s.inline is not None:
            d["inline"] = list(s.inline)
        _put(d, "sha256Checksum", s.sha256_checksum)
        if isinstance(s, m.PowerShellStep):
            d.update(runElevated=s.run_elevated, runAsSystem=s.run_as_system, validExitCodes=list(s.valid_exit_codes))
    elif isinstance(s, m.FileStep):
        d.update(sourceUri=s.source_uri, destination=s.destination)
        _put(d, "sha256Checksum", s.sha256_checksum)
    elif isinstance(s, m.WindowsRestartStep):
        _put(d, "restartCommand", s.restart_command)
        _put(d, "restartCheckCommand", s.restart_check_command)
        d["restartTimeout"] = s.restart_timeout
    else:
        _put(d, "searchCriteria", s.search_criteria)
        _put(d, "filters", list(s.filters))
        d["updateLimit"] = s.update_limit
    return d


def _target(t: m.DistributeTarget) -> dict[str, Any]:
    d: dict[str, Any] = {"type": t.type, "runOutputName": t.run_output_name}
    _put(d, "artifactTags", dict(t.artifact_tags))
    if isinstance(t, m.ManagedImageTarget):
        d.update(imageId=t.image_id, location=t.location)
    elif isinstance(t, m.SharedImageTarget):
        d["galleryImageId"] = t.gallery_image_id
        regions = []
        for r in t.target_regions:
            region: dict[str, Any] = {"name": r.name, "replicaCount": r.replica_count}
            _put(region, "storageAccountType", r.storage_account_type)
            regions.append(region)
        _put(d, "targetRegions", regions)
        d["excludeFromLatest"] = t.exclude_from_latest
        _put(d, "storageAccountType", t.storage_account_type)
        if t.versioning is not None:
            d["versioning"] = {"scheme": t.versioning.scheme}
            if t.versioning.scheme == "Latest":
                d["versioning"]["major"] = t.versioning.major
        _put(d, "replicationMode", t.replication_mode)
    else:
        _put(d, "uri", t.uri)
    return d


def dump_template(t: m.ImageTemplate) -> dict[str, Any]:
    """The template as a bare image template resource (2025-10-01 REST shape, with apiVersion)."""
    props: dict[str, Any] = {"source": _source(t.source)}
    _put(props, "customize", [_step(s) for s in t.customize])
    if t.optimize is not None:
        opt: dict[str, Any] = {}
        if t.optimize.vm_boot is not None:
            opt["vmBoot"] = {"state": t.optimize.vm_boot}
        workload: dict[str, Any] = {}
        _put(workload, "state", t.optimize.workload)
        _put(workload, "scriptUri", t.optimize.workload_script_uri)
        _put(workload, "sha256Checksum", t.optimize.workload_sha256_checksum)
        if workload:
            opt["workload"] = workload
        props["optimize"] = opt
    v = t.validate
    if v != m.Validate():
        props["validate"] = {
            "continueDistributeOnFailure": v.continue_distribute_on_failure,
            "sourceValidationOnly": v.source_validation_only,
            "inVMValidations": [_step(s) for s in v.in_vm_validations],
        }
    props["distribute"] = [_target(x) for x in t.distribute]
    if t.error_handling != m.ErrorHandling():
        props["errorHandling"] = {"onCustomizerError": t.error_handling.on_customizer_error,
                                  "onValidationError": t.error_handling.on_validation_error}
    props["buildTimeoutInMinutes"] = t.build_timeout_in_minutes
    vp = t.vm_profile
    if vp != m.VmProfile():
        profile: dict[str, Any] = {"osDiskSizeGB": vp.os_disk_size_gb}
        _put(profile, "vmSize", vp.vm_size)
        _put(profile, "userAssignedIdentities", list(vp.user_assigned_identities))
        if vp.vnet_config is not None:
            vnet: dict[str, Any] = {}
            _put(vnet, "subnetId", vp.vnet_config.subnet_id)
            _put(vnet, "containerInstanceSubnetId", vp.vnet_config.container_instance_subnet_id)
            _put(vnet, "proxyVmSize", vp.vnet_config.proxy_vm_size)
            profile["vnetConfig"] = vnet
        props["vmProfile"] = profile
    _put(props, "additionalDataDisks", [{"sizeGB": d.size_gb} for d in t.additional_data_disks])
    _put(props, "stagingResourceGroup", t.staging_resource_group)
    if t.auto_run is not None:
        props["autoRun"] = {"state": t.auto_run}
    _put(props, "managedResourceTags", dict(t.managed_resource_tags))

    identity: dict[str, Any] = {"type": t.identity.type}
    if t.identity.user_assigned_identities:
        identity["userAssignedIdentities"] = {i: {} for i in t.identity.user_assigned_identities}
    out: dict[str, Any] = {
        "type": RESOURCE_TYPE,
        "apiVersion": t.api_version,
        "name": t.name,
        "location": t.location,
    }
    _put(out, "tags", dict(t.tags))
    out["identity"] = identity
    _put(out, "dependsOn", list(t.depends_on))
    out["properties"] = props
    return out
