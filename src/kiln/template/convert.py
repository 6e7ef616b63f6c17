"""A normalized, validated template dict -> the frozen model.

Only called once the schema and the semantic checks found nothing, so every value here has the
type the schema promised; this module is a plain mapping of 2025-10-01 names onto model fields.
Empty strings that the API treats as "not given" (sha256Checksum, uri, vmSize) become None.
"""

from __future__ import annotations

from typing import Any

from kiln.template import model as m


def _opt(value: Any) -> Any:
    return None if value in (None, "") else value


def _tags(value: Any) -> dict[str, str]:
    return dict(value or {})


def _source(d: dict[str, Any]) -> m.Source:
    kind = d["type"]
    if kind == "PlatformImage":
        plan = d.get("planInfo")
        return m.PlatformImageSource(
            publisher=d["publisher"], offer=d["offer"], sku=d["sku"], version=d.get("version") or "latest",
            plan_info=m.PlanInfo(plan_name=plan["planName"], plan_product=plan["planProduct"],
                                 plan_publisher=plan["planPublisher"]) if plan else None,
        )
    if kind == "ManagedImage":
        return m.ManagedImageSource(image_id=d["imageId"])
    if kind == "SharedImageVersion":
        return m.SharedImageVersionSource(image_version_id=d["imageVersionId"])
    return m.IsoSource(source_uri=d["sourceUri"], sha256_checksum=d["sha256Checksum"])


def _step(d: dict[str, Any]) -> m.Customizer:
    kind, name = d["type"], d.get("name") or ""
    inline = tuple(d["inline"]) if d.get("inline") is not None else None
    if kind == "Shell":
        return m.ShellStep(name=name, script_uri=_opt(d.get("scriptUri")), inline=inline,
                           sha256_checksum=_opt(d.get("sha256Checksum")))
    if kind == "PowerShell":
        return m.PowerShellStep(
            name=name, script_uri=_opt(d.get("scriptUri")), inline=inline,
            sha256_checksum=_opt(d.get("sha256Checksum")),
            run_elevated=bool(d.get("runElevated", False)), run_as_system=bool(d.get("runAsSystem", False)),
            valid_exit_codes=tuple(int(c) for c in d["validExitCodes"]) if d.get("validExitCodes") else (0,),
        )
    if kind == "File":
        return m.FileStep(name=name, source_uri=d["sourceUri"], destination=d["destination"],
                          sha256_checksum=_opt(d.get("sha256Checksum")))
    if kind == "WindowsRestart":
        return m.WindowsRestartStep(name=name, restart_command=_opt(d.get("restartCommand")),
                                    restart_check_command=_opt(d.get("restartCheckCommand")),
                                    restart_timeout=d.get("restartTimeout") or "5m")
    return m.WindowsUpdateStep(name=name, search_criteria=_opt(d.get("searchCriteria")),
                               filters=tuple(d.get("filters") or ()), update_limit=int(d.get("updateLimit", 0)))


def _validation(d: dict[str, Any]) -> m.InVMValidator:
    step = _step(d)
    # The schema allows only these step types here, and to_model sees validated templates only.
    assert isinstance(step, m.ShellStep | m.PowerShellStep | m.FileStep), step
    return step


def _target(d: dict[str, Any]) -> m.DistributeTarget:
    kind, run_output, tags = d["type"], d["runOutputName"], _tags(d.get("artifactTags"))
    if kind == "ManagedImage":
        return m.ManagedImageTarget(run_output_name=run_output, artifact_tags=tags, image_id=d["imageId"],
                                    location=d["location"])
    if kind == "SharedImage":
        versioning = d.get("versioning")
        return m.SharedImageTarget(
            run_output_name=run_output, artifact_tags=tags, gallery_image_id=d["galleryImageId"],
            target_regions=tuple(
                m.TargetRegion(name=r["name"], replica_count=int(r.get("replicaCount", 1)),
                               storage_account_type=r.get("storageAccountType"))
                for r in d.get("targetRegions") or ()
            ),
            exclude_from_latest=bool(d.get("excludeFromLatest", False)),
            storage_account_type=d.get("storageAccountType"),
            versioning=m.Versioning(scheme=versioning["scheme"], major=int(versioning.get("major", -1)))
            if versioning else None,
            replication_mode=d.get("replicationMode"),
        )
    return m.VhdTarget(run_output_name=run_output, artifact_tags=tags, uri=_opt(d.get("uri")))


def _state(d: Any) -> Any:
    return d.get("state") if isinstance(d, dict) else None


def to_model(data: dict[str, Any], *, name: str, api_version: str, file: str = "") -> m.ImageTemplate:
    p = data["properties"]
    validate = p.get("validate") or {}
    optimize = p.get("optimize")
    handling = p.get("errorHandling") or {}
    profile = p.get("vmProfile") or {}
    vnet = profile.get("vnetConfig")
    identity = data.get("identity") or {}
    users = tuple((identity.get("userAssignedIdentities") or {}).keys())
    workload = (optimize or {}).get("workload") or {}
    return m.ImageTemplate(
        name=name,
        api_version=api_version,
        location=data["location"],
        source=_source(p["source"]),
        distribute=tuple(_target(t) for t in p["distribute"]),
        customize=tuple(_step(s) for s in p.get("customize") or ()),
        validate=m.Validate(
            continue_distribute_on_failure=bool(validate.get("continueDistributeOnFailure", False)),
            source_validation_only=bool(validate.get("sourceValidationOnly", False)),
            in_vm_validations=tuple(_validation(s) for s in validate.get("inVMValidations") or ()),
        ),
        optimize=m.Optimize(
            vm_boot=_state(optimize.get("vmBoot")),
            workload=_state(workload),
            workload_script_uri=_opt(workload.get("scriptUri")),
            workload_sha256_checksum=_opt(workload.get("sha256Checksum")),
        ) if optimize is not None else None,
        error_handling=m.ErrorHandling(
            on_customizer_error=handling.get("onCustomizerError", "cleanup"),
            on_validation_error=handling.get("onValidationError", "cleanup"),
        ),
        build_timeout_in_minutes=int(p.get("buildTimeoutInMinutes", 0)),
        vm_profile=m.VmProfile(
            vm_size=_opt(profile.get("vmSize")),
            os_disk_size_gb=int(profile.get("osDiskSizeGB", 0)),
            user_assigned_identities=tuple(profile.get("userAssignedIdentities") or ()),
            vnet_config=m.VnetConfig(
                subnet_id=_opt(vnet.get("subnetId")),
                container_instance_subnet_id=_opt(vnet.get("containerInstanceSubnetId")),
                proxy_vm_size=_opt(vnet.get("proxyVmSize")),
            ) if vnet is not None else None,
        ),
        additional_data_disks=tuple(m.DataDisk(size_gb=int(d.get("sizeGB", 0)))
                                    for d in p.get("additionalDataDisks") or ()),
        staging_resource_group=_opt(p.get("stagingResourceGroup")),
        auto_run=_state(p.get("autoRun")),
        managed_resource_tags=_tags(p.get("managedResourceTags")),
        identity=m.Identity(type=identity.get("type") or ("UserAssigned" if users else "None"),
                            user_assigned_identities=users),
        tags=_tags(data.get("tags")),
        depends_on=tuple(data.get("dependsOn") or ()),
        file=file,
    )
