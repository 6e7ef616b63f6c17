"""The PowerShell step: runs `pwsh` inside the image, in the isolated root or the booted guest.

Linux images can have PowerShell (Microsoft packages it), so a PowerShell step is allowed on a
Linux source: it runs `pwsh -NoProfile -NonInteractive -File` inside the isolated root on the
inline lines (joined into one script) or on the downloaded, checksum-verified `scriptUri`. If
the image has no `pwsh` on its PATH, the step fails with a clear error naming it. Exit codes in
`validExitCodes` (default [0]) count as success. `runElevated`/`runAsSystem` change nothing on
Linux: customizers already run as root.

As an in-VM validation the guest runs the same command on the same script (embedded in a small
sh wrapper), and the same `validExitCodes` decide: the wrapper reports 0 for a valid code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .base import (
    DEFS,
    INLINE,
    SCRIPT_URI,
    SHA256,
    CustomizerFailed,
    CustomizerType,
    GuestContext,
    StepContext,
    register,
    step_schema,
    valid_exit_codes,
)
from .script import embed, exit_code_filter, fetch_script, stage_script

if TYPE_CHECKING:
    from kiln.template.model import PowerShellStep

SCHEMA: dict[str, Any] = step_schema("PowerShell", "PowerShell step", {
    "scriptUri": SCRIPT_URI,
    "sha256Checksum": SHA256,
    "inline": INLINE,
    "runElevated": {"type": "boolean", "description": "run with elevated privileges"},
    "runAsSystem": {"type": "boolean", "description": "run as the Local System user; needs runElevated"},
    "validExitCodes": {"type": "array", "items": {"$ref": "#/$defs/int32"},
                       "description": "exit codes that count as success (default [0])"},
}, **{"$defs": DEFS})

PWSH_DIRS = ("/usr/local/bin", "/usr/bin", "/bin", "/snap/bin", "/opt/microsoft/powershell/7")
PWSH_ARGS = ("-NoProfile", "-NonInteractive", "-ExecutionPolicy", "Bypass", "-File")
NO_PWSH = "PowerShell (pwsh) is not installed in this image"


@dataclass(frozen=True)
class Prepared:
    script: str  # path inside the root


def prepare(step: PowerShellStep, ctx: StepContext) -> Prepared:
    name = f"step-{ctx.info.index}.ps1"
    stage_script(step, ctx.fetcher, ctx.stage / name, ctx.info.path)
    return Prepared(f"/run/kiln/{name}")


def find_pwsh(ctx: StepContext) -> str | None:
    """Where `pwsh` is inside the image (checked when the step runs: an earlier step may install it)."""
    from kiln.sandbox.isolated import resolve_in_root

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
            ctx.info, NO_PWSH,
            hint="install PowerShell in an earlier Shell step, or use a Shell step on Linux images",
        )
    argv = (pwsh, *PWSH_ARGS, prepared.script)
    done = ctx.root.run(("/usr/bin/env", "-C", "/tmp", *argv), stage=ctx.stage, timeout=ctx.timeout,
                        name=ctx.info.name or ctx.info.type)
    valid = valid_exit_codes(step)
    if done.returncode not in valid:
        raise CustomizerFailed(ctx.info, f"(valid exit codes: {', '.join(map(str, valid))})",
                               returncode=done.returncode, tail=done.tail)


def guest(step: PowerShellStep, ctx: GuestContext) -> bytes:
    # The script goes to a file, not to -Command: pwsh -File wants a name ending in .ps1, and it
    # is how the customize step runs it (a script's exit code and $args behave the same).
    return (
        "#!/bin/sh\n"
        f"command -v pwsh >/dev/null || {{ echo '{NO_PWSH}' >&2; exit 127; }}\n"
        "script=$(mktemp /tmp/kiln-XXXXXX.ps1) || exit 1\n"
        + embed(fetch_script(step, ctx), "script")
        + f'(cd /tmp && pwsh {" ".join(PWSH_ARGS)} "$script")\n'
        "rc=$?\n"
        'rm -f "$script"\n'
        + exit_code_filter(valid_exit_codes(step))
    ).encode()


register(CustomizerType("PowerShell", SCHEMA, ("Linux", "Windows"), prepare, run, guest=guest))
