"""The Shell customizer: `inline` lines or a `scriptUri`, run as root inside the isolated root.

As Packer and AIB do, `inline` lines are joined into one script run with `/bin/sh -e` (the first
failing line stops it). A `scriptUri` is downloaded and its `sha256Checksum` verified before any
step runs; it is executed directly when it has a `#!` line, else with `/bin/sh`. Scripts are not
copied into the image: they are staged in a host folder shown read-only at /run/kiln inside.
Steps run in /tmp (Packer runs in the build user's home, which deprovisioning deletes; /tmp is
likewise cleaned by generalization).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kiln.template.model import ShellStep

from .base import COMMON_PROPERTIES, CustomizerFailed, CustomizerType, StepContext, register

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Shell customizer",
    "type": "object",
    "properties": {
        **COMMON_PROPERTIES,
        "type": {"const": "Shell"},
        "inline": {"type": "array", "items": {"type": "string"}},
        "scriptUri": {"type": "string", "minLength": 1},
        "sha256Checksum": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"},
    },
    "required": ["type"],
    "oneOf": [{"required": ["inline"]}, {"required": ["scriptUri"]}],
    "additionalProperties": False,
}

STEP_CWD = "/tmp"


@dataclass(frozen=True)
class Prepared:
    argv: tuple[str, ...]  # inside the root


def prepare(step: ShellStep, ctx: StepContext) -> Prepared:
    base = f"step-{ctx.info.index}"
    if step.inline is not None:
        script = ctx.stage / f"{base}.sh"
        script.write_text("\n".join(step.inline) + "\n")
        return Prepared(("/bin/sh", "-e", f"/run/kiln/{script.name}"))
    assert step.script_uri is not None
    script = ctx.fetcher.fetch_to(step.script_uri, step.sha256_checksum, ctx.stage / f"{base}-script",
                                  what=f"{ctx.info.path}.scriptUri")
    script.chmod(0o755)
    inside = f"/run/kiln/{script.name}"
    with script.open("rb") as fh:
        shebang = fh.read(2) == b"#!"
    return Prepared((inside,) if shebang else ("/bin/sh", inside))


def run(step: ShellStep, ctx: StepContext, prepared: Prepared) -> None:
    done = ctx.root.run(("/usr/bin/env", "-C", STEP_CWD, *prepared.argv), stage=ctx.stage, timeout=ctx.timeout,
                        name=ctx.info.name or ctx.info.type)
    if not done.ok:
        raise CustomizerFailed(ctx.info, "", returncode=done.returncode, tail=done.tail,
                               hint="see the run's customization.log for the full output")


register(CustomizerType("Shell", SCHEMA, ("Linux",), prepare, run,
                        unsupported_hint="Shell runs on Linux images; use PowerShell for Windows"))
