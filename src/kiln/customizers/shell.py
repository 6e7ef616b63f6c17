"""The Shell step: `inline` lines or a `scriptUri`, run as root in the isolated root or the guest.

As Packer and AIB do, `inline` lines are joined into one script run with `/bin/sh -e` (the first
failing line stops it). A `scriptUri` is downloaded and its `sha256Checksum` verified before any
step runs; it is executed directly when it has a `#!` line, else with `/bin/sh`. Scripts are not
copied into the image: they are staged in a host folder shown read-only at /run/kiln inside.
Steps run in /tmp (Packer runs in the build user's home, which deprovisioning deletes; /tmp is
likewise cleaned by generalization).

As an in-VM validation the same script runs in the booted guest: one with a `#!` line as it is
(the guest starts its interpreter), any other under bash with `set -e` (AIB runs Shell
validations with bash). Only exit code 0 counts as success: AIB's Shell has no validExitCodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .base import (
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
from .script import fetch_script, has_shebang, stage_script

if TYPE_CHECKING:
    from kiln.template.model import ShellStep

SCHEMA: dict[str, Any] = step_schema("Shell", "Shell step", {
    "scriptUri": SCRIPT_URI,
    "sha256Checksum": SHA256,
    "inline": INLINE,
})

STEP_CWD = "/tmp"


@dataclass(frozen=True)
class Prepared:
    argv: tuple[str, ...]  # inside the root


def prepare(step: ShellStep, ctx: StepContext) -> Prepared:
    base = f"step-{ctx.info.index}"
    if step.inline is not None:
        script = stage_script(step, ctx.fetcher, ctx.stage / f"{base}.sh", ctx.info.path)
        return Prepared(("/bin/sh", "-e", f"/run/kiln/{script.name}"))
    script = stage_script(step, ctx.fetcher, ctx.stage / f"{base}-script", ctx.info.path)
    script.chmod(0o755)
    inside = f"/run/kiln/{script.name}"
    return Prepared((inside,) if has_shebang(script) else ("/bin/sh", inside))


def run(step: ShellStep, ctx: StepContext, prepared: Prepared) -> None:
    done = ctx.root.run(("/usr/bin/env", "-C", STEP_CWD, *prepared.argv), stage=ctx.stage, timeout=ctx.timeout,
                        name=ctx.info.name or ctx.info.type)
    if done.returncode not in valid_exit_codes(step):
        raise CustomizerFailed(ctx.info, "", returncode=done.returncode, tail=done.tail,
                               hint="see the run's customization.log for the full output")


def guest(step: ShellStep, ctx: GuestContext) -> bytes:
    body = fetch_script(step, ctx)
    if step.inline is None and has_shebang(body):
        return body  # line 1 stays the #! line: the guest runs it with that interpreter
    return b"set -e\n" + body


register(CustomizerType("Shell", SCHEMA, ("Linux",), prepare, run,
                        unsupported_hint="Shell runs on Linux images; use PowerShell for Windows", guest=guest))
