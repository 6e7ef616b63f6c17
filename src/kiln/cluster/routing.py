"""Which worker may run which build: capabilities, the queues they make, a template's requirements.

A worker advertises its capabilities: `accel` (kvm or tcg, as the boot test would run here),
`arch` (the machine, x86_64 ...), `scratch_free` (bytes free where root trees go) and `version`
(kiln's). A template asks for what it needs with kiln's tag on the template,
`"tags": {"kiln.requires": "kvm"}` (comma-separated: `"kvm,x86_64"`), and may pin one host with
`"kiln.host": "NAME"` (a worker's name). `"kiln.retries": "1"` asks for a build whose worker was
lost mid-build to be enqueued once more (`"0"`: failed "worker lost"); without the tag,
config.toml's `[cluster] retries` decides (default 0).

One queue per capability set: a build that requires the set S goes to `kiln.build.<S sorted,
dot-joined>` (`kiln.build.any` for none), and a worker listens to every queue whose set its own
capabilities cover (KVM hosts also take TCG-agnostic builds, never the reverse), plus its host
queue `kiln.host.<name>`. A worker on an unknown capability simply never sees such a build: it
stays queued (and `kiln cluster status` shows the queue) until a host that can run it joins.
"""

from __future__ import annotations

import itertools
import os
import platform
from collections.abc import Mapping
from typing import Any

from kiln import __version__
from kiln.config import Config
from kiln.errors import InvalidInput

REQUIRES_TAG = "kiln.requires"
HOST_TAG = "kiln.host"
RETRIES_TAG = "kiln.retries"
QUEUE_PREFIX = "kiln.build."
HOST_PREFIX = "kiln.host."
ACCELS = ("kvm", "tcg")
ARCHS = ("x86_64", "aarch64")
KNOWN = ACCELS + ARCHS


def capabilities(config: Config) -> dict[str, Any]:
    from kiln.sandbox.vm import detect_accel
    from kiln.scratch import scratch_parent

    scratch = scratch_parent(config.work_dir)
    scratch.mkdir(parents=True, exist_ok=True)
    st = os.statvfs(scratch)
    return {"accel": detect_accel(), "arch": platform.machine(), "scratch_free": st.f_bavail * st.f_frsize,
            "scratch": str(scratch), "version": __version__}


def requirements(tags: Mapping[str, str], *, file: str = "") -> tuple[tuple[str, ...], str]:
    """(the capabilities a template's tags require, the host it is pinned to)."""
    wanted = tuple(sorted({w.strip().lower() for w in tags.get(REQUIRES_TAG, "").split(",") if w.strip()}))
    unknown = [w for w in wanted if w not in KNOWN]
    if unknown:
        raise InvalidInput(f"tag {REQUIRES_TAG} asks for {', '.join(unknown)}, which no kiln worker offers",
                           file=file, path=f".tags[{REQUIRES_TAG!r}]", hint=f"use some of {', '.join(KNOWN)}")
    if len([w for w in wanted if w in ACCELS]) > 1 or len([w for w in wanted if w in ARCHS]) > 1:
        raise InvalidInput(f"tag {REQUIRES_TAG} asks for {', '.join(wanted)}: no host is both", file=file,
                           path=f".tags[{REQUIRES_TAG!r}]", hint="name one accelerator and one architecture at most")
    return wanted, tags.get(HOST_TAG, "").strip()


def retries(tags: Mapping[str, str], *, file: str = "") -> int | None:
    """How often a build whose worker was lost is enqueued again, as the template's tag says (0 or 1;
    None: the tag is not there, `[cluster] retries` decides)."""
    value = tags.get(RETRIES_TAG)
    if value is None:
        return None
    if value.strip() not in ("0", "1"):
        raise InvalidInput(f"tag {RETRIES_TAG} is {value!r}: a build whose worker was lost is retried at most once",
                           file=file, path=f".tags[{RETRIES_TAG!r}]",
                           hint='use "1" (enqueue it once more, for another worker) or "0" (fail it "worker lost")')
    return int(value)


def queue_for(requires: tuple[str, ...], host: str = "") -> str:
    if host:
        return HOST_PREFIX + host
    return QUEUE_PREFIX + (".".join(sorted(requires)) or "any")


def queues_for(caps: Mapping[str, Any], name: str) -> list[str]:
    """Every queue a worker with `caps` serves: its host queue first, then the most specific sets."""
    offered = sorted({str(caps.get("accel", "")), str(caps.get("arch", ""))} - {""})
    sets = [c for n in range(len(offered), -1, -1) for c in itertools.combinations(offered, n)]
    return [HOST_PREFIX + name, *(queue_for(tuple(s)) for s in sets)]
