"""The PowerShell customizer: runs `pwsh` inside the image.

Linux images can have PowerShell (Microsoft packages it), so a PowerShell step is allowed on a
Linux source: it runs `pwsh -NoProfile -NonInteractive -File` inside the isolated root on the
inline lines (joined into one script) or on the downloaded, checksum-verified `scriptUri`. If
the image has no `pwsh` on its PATH, the step fails with a clear error naming it. Exit codes in
`validExitCodes` (default [0]) count as success. `runElevated`/`runAsSystem` change nothing on
Linux: customizers already run as root.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kiln.sandbox.isolated import resolve_in_root
from kiln.template.model import PowerShellStep

from .base import COMMON_PROPERTIES, CustomizerFailed, CustomizerType, StepContext, register

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "PowerShell customizer",
    "type": "object",
    "properties": {
        **COMMON_PROPERTIES,
        "type": {"const": "PowerShell"},
        "inline": {"type": "array", "items": {"type": "string"}},
        "scriptUri": {"type": "string", "minLength": 1},
        "sha256Checksum": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"},
        "runElevated": {"type": "boolean"},
        "runAsSystem": {"type": "boolean"},
        "validExitCodes": {"type": "array", "items": {"type": "integer"}},
    },
    "required": ["type"],
    "oneOf": [{"required": ["inline"]}, {"required": ["scriptUri"]}],
    "additionalProperties": False,
}

PWSH_DIRS = ("/usr/local/bin", "/usr/bin", "/bin", "/snap/bin", "/opt/microsoft/powershell/7")


@dataclass(frozen=True)
class Prepared:
    script: str  # path inside the root


def prepare(step: PowerShellStep, ctx: StepContext) -> Prepared:
    name = f"step-{ctx.info.index}.ps1"
    if step.inline is not None:
        (ctx.stage / name).write_text("\n".join(step.inline) + "\n")
    else:
        assert step.script_uri is not None
        ctx.fetcher.fetch_to(step.script_uri, step.sha256_checksum, ctx.stage / name, what=f"{ctx.info.path}.scriptUri")
    return Prepared(f"/run/kiln/{name}")


def find_pwsh(ctx: StepContext) -> str | None:
    """Where `pwsh` is inside the image (checked when the step runs: an earlier step may install it)."""
    root = ctx.root.root
    for d in PWSH_DIRS:
        inside = resolve_in_root(root, f"{d}/pwsh")
        host = root / str(inside).lstrip("/")
        if host.is_file() and host.stat().st_mode & 0o111:
            return f"{d}/pwsh"
    return None


def run(step: PowerShellStep, ctx: StepContext, prepared: Prepared) -> None:
    pwsh = find_pwsh(ctx)
    if pwsh is None:
        raise CustomizerFailed(
            ctx.info, "PowerShell (pwsh) is not installed in this image",
            hint="install PowerShell in an earlier Shell step, or use a Shell step on Linux images",
        )
    argv = (pwsh, "-NoProfile", "-NonInteractive", "-ExecutionPolicy", "Bypass", "-File", prepared.script)
    done = ctx.root.run(("/usr/bin/env", "-C", "/tmp", *argv), stage=ctx.stage, timeout=ctx.timeout,
                        name=ctx.info.name or ctx.info.type)
    valid = step.valid_exit_codes or (0,)
    if done.returncode not in valid:
        raise CustomizerFailed(ctx.info, f"(valid exit codes: {', '.join(map(str, valid))})",
                               returncode=done.returncode, tail=done.tail)


register(CustomizerType("PowerShell", SCHEMA, ("Linux", "Windows"), prepare, run))
