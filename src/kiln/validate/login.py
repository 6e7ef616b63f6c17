"""The SSH-login boot test: provision a throwaway admin user through NoCloud, log in, validate.

For an image with cloud-init (see choose.py), the boot test proves what its users need: that a VM
made from it provisions and can be logged into. For one boot of a throwaway overlay, kiln makes an
ephemeral ed25519 key and a `cidata` seed (xorriso, no mount) that gives a new admin user that
key, attaches the seed as a small read-only virtio disk (the path every Debian kernel can read;
q35 puts CD-ROMs on AHCI, which linux-image-cloud-amd64 lacks), and forwards a free port on
127.0.0.1 to the guest's port 22 (QEMU user networking). Then, with OpenSSH's client:

1. log in as the new user (cloud-init's init stage has created it and sshd is up);
2. wait for cloud-init's last stage (result.json): `done` is ready, `error` fails the test with cloud-init's
   own errors (each stage's, from /run/cloud-init/status.json); systemd's state and failed units are kept;
3. run each in-VM validation as root through sudo (guest-run.sh), as AIB runs them over SSH.

Nothing of this reaches the published disk: the seed, the key, the user and cloud-init's
instance state exist only in the overlay, which is deleted with the VM (a test reads the
published disk to prove it).
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import shlex
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

from kiln.access.keys import make_key
from kiln.access.seed import Seed, write_seed
from kiln.access.ssh import SshTarget, free_port, shared_connection, ssh_run, wait_for_login
from kiln.events import Monitor
from kiln.run import ToolFailed
from kiln.sandbox.vm import DataDisk, VirtualMachine

SEED_SERIAL = "kiln-seed"
USER_PREFIX = "kiln-check-"
KEY_COMMENT = "kiln-boot-test"
LOGIN_POLL_S = 1.0
# One SSH session reports cloud-init's and systemd's state.
# It waits for cloud-init's last stage by watching for /run/cloud-init/result.json (written when
# modules-final ends) with the shell, not with `cloud-init status --wait`: under TCG starting
# cloud-init's Python costs seconds, which every boot test would pay. Only when the final stage
# failed before writing it does `cloud-init status --long` run, for its own words.
# The wait itself must cost the guest next to nothing, since cloud-init shares its vCPU: the test
# for the file is the shell's own; systemd is asked whether the final stage failed (which would
# never write the file) only every 5 s, each `systemctl` costing a process and a D-Bus call.
STATUS_COMMAND = (
    "n=0; until [ -e /run/cloud-init/result.json ]; do "
    "n=$((n + 1)); if [ $((n % 10)) = 0 ]; then "
    "case \"$(systemctl show -P ActiveState cloud-final.service 2>/dev/null)\" in failed) break;; esac; fi; "
    "sleep 0.5; done; "
    "if [ -e /run/cloud-init/result.json ]; then echo KILN-CLOUD-INIT-FINISHED; "
    "else cloud-init status --long 2>&1; fi; echo; echo \"KILN-CLOUD-INIT-RC $?\"; "
    "echo KILN-RESULT-JSON; cat /run/cloud-init/status.json 2>/dev/null; echo; "
    "echo \"KILN-STATE $(systemctl is-system-running --wait 2>/dev/null)\"; "
    "systemctl --no-pager --no-legend --plain --failed 2>/dev/null | sed 's/^/KILN-FAILED-UNIT /'"
)


@dataclass(frozen=True)
class GuestStatus:
    """What the status session reported: cloud-init's verdict and systemd's state."""

    cloud_init: str  # done | error | running | disabled | ... ("" if it never said)
    errors: tuple[str, ...] = ()  # cloud-init's own error texts
    detail: str = ""  # `status --long`, for a failure message
    system_state: str = ""
    failed_units: tuple[str, ...] = ()


def parse_status(text: str) -> GuestStatus:
    status_part, _, rest = text.partition("KILN-RESULT-JSON")
    json_part, _, state_part = rest.partition("KILN-STATE")
    m = re.search(r"^status:\s*(\S+)", status_part, re.MULTILINE)
    errors: list[str] = []
    try:  # status.json: each stage's errors (result.json lists only some of them)
        v1 = json.loads(json_part.strip() or "{}").get("v1", {})
        for stage, info in v1.items():
            if isinstance(info, dict):
                errors += [f"{stage}: {e}" for e in info.get("errors") or []]
                for level, messages in (info.get("recoverable_errors") or {}).items():
                    if level.upper() in ("ERROR", "CRITICAL"):
                        errors += [f"{stage}: {level}: {m}" for m in messages]
    except (ValueError, AttributeError):
        pass
    lines = state_part.splitlines()
    failed = tuple(ln.split()[1] for ln in lines if ln.startswith("KILN-FAILED-UNIT ") and len(ln.split()) > 1)
    detail = re.sub(r"^\.+", "", status_part.split("KILN-CLOUD-INIT-RC")[0]).strip()
    if m:
        verdict = m.group(1)
    elif "KILN-CLOUD-INIT-FINISHED" in status_part:
        # Every stage has ended: done unless one reported an error (what `cloud-init status` says).
        verdict = "error" if errors else "done"
        detail = "; ".join(errors) or "done"
    else:
        verdict = ""
    return GuestStatus(verdict, tuple(errors), detail, lines[0].strip() if lines else "", failed)


@dataclass
class LoginOutcome:
    """What the SSH-login boot test saw; boottest.py turns it into a BootReport."""

    accel: str = ""
    user: str = ""
    login_at: float | None = None  # seconds from QEMU's start to the first working login
    ready_at: float | None = None  # ... to cloud-init done
    status: GuestStatus | None = None
    results: list[tuple[str, int, str]] = field(default_factory=list)  # (name, exit code, output)
    problem: str = ""


def _runner() -> str:
    return files("kiln.validate").joinpath("guest-run.sh").read_text()


def run_validation(target: SshTarget, nonce: str, content: bytes, timeout: float) -> tuple[int, str] | str:
    """Run one script as root in the guest: (exit code, output), or why the session failed."""
    command = "sudo -n -H env LANG=C.UTF-8 SYSTEMD_PAGER= sh -c " + shlex.quote(_runner()) + " kiln-run " + nonce
    proc = ssh_run(target, command, input=base64.b64encode(content).decode() + "\n", timeout=timeout)
    out = proc.output or ""
    m = re.search(rf"(?:^|\n)KILN-END {nonce} (\d+)\s*$", out)
    if m is None:
        return f"the SSH session ended without a result (ssh exit {proc.exit_code}): {out.strip()[-500:]}"
    return int(m.group(1)), out[:m.start()]


def login_boot(
    disk: Path,
    fmt: str,
    *,
    scripts: Sequence[tuple[str, bytes]],
    timeout_s: float,
    scripts_timeout_s: float,
    monitor: Monitor,
    serial_log: Path | None,
    memory_mib: int,
    cpus: int,
    work_dir: Path | None,
    firmware: str,
    on_serial: Callable[[str], None] | None = None,
) -> LoginOutcome:
    """Boot `disk` on an overlay with a NoCloud seed, log in, wait for cloud-init, run `scripts`.

    `on_serial(text)` is fed the serial console as it comes (boottest.py keeps its tail).
    """
    feed = on_serial or (lambda text: None)
    nonce = secrets.token_hex(12)
    out = LoginOutcome(user=USER_PREFIX + nonce[:8])
    if work_dir:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
    # the SSH control socket in a short path (a socket's path has at most 107 bytes)
    with tempfile.TemporaryDirectory(prefix="kiln-login-", dir=work_dir) as tmp, \
            tempfile.TemporaryDirectory(prefix="kiln-ssh-") as sockets:
        key = make_key(Path(tmp) / "id_ed25519", comment=f"{KEY_COMMENT}-{nonce}")
        seed = Seed(instance_id=f"kiln-boot-test-{nonce}", hostname="kiln-boot-test", user=out.user,
                    public_keys=(key.public,))
        iso = write_seed(seed, Path(tmp) / "seed.iso")
        port = free_port()
        target = SshTarget(out.user, port, key.private, control=Path(sockets) / "control")
        started = time.monotonic()
        with VirtualMachine(disk, fmt, serial_log=serial_log, memory_mib=memory_mib, overlay=True, work_dir=work_dir,
                            data_disks=[DataDisk(SEED_SERIAL, iso.read_bytes())], monitor=monitor, cpus=cpus,
                            firmware=firmware, ssh_port=port) as vm, shared_connection(target):
            out.accel = vm.accel
            monitor.log(f"boot test: SSH login as {out.user} on 127.0.0.1:{port} (NoCloud seed on a virtio disk)")

            def elapsed() -> float:
                return time.monotonic() - started

            # 1. the first login that works
            login = wait_for_login(target, timeout_s=timeout_s, alive=lambda: vm.poll() is None,
                                   poll_s=LOGIN_POLL_S, on_poll=lambda: feed(vm.read_serial()))
            if login is None:
                feed(vm.read_serial())
                if (code := vm.poll()) is not None:
                    out.problem = f"QEMU exited with code {code} before an SSH login worked"
                    if qemu_out := vm.qemu_output().strip():
                        out.problem += f"\nQEMU said: {qemu_out[-1500:]}"
                else:
                    out.problem = f"the guest did not accept an SSH login within {timeout_s:.0f} s"
                return out
            out.login_at = elapsed()
            monitor.log(f"guest: SSH login as {out.user} worked after {out.login_at:.1f} s; waiting for cloud-init")
            # 2. cloud-init's verdict and systemd's state. `timeout_s` bounded the boot (to a login);
            # cloud-init's later stages get as long again.
            try:
                proc = ssh_run(target, STATUS_COMMAND, timeout=timeout_s)
            except ToolFailed:
                feed(vm.read_serial())
                out.problem = f"cloud-init did not finish within {timeout_s:.0f} s of the first SSH login"
                return out
            feed(vm.read_serial())
            out.status = status = parse_status(proc.output)
            if status.cloud_init != "done":
                if status.cloud_init == "error":
                    errors = "; ".join(status.errors) or status.detail
                    out.problem = f"cloud-init reported status error: {errors}"
                else:
                    out.problem = (f"cloud-init did not report done (status {status.cloud_init or 'unknown'}, "
                                   f"ssh exit {proc.exit_code}): {(status.detail or proc.output).strip()[-800:]}")
                return out
            out.ready_at = elapsed()
            monitor.log(f"guest ready after {out.ready_at:.1f} s: cloud-init done, system {status.system_state}"
                        + (f"; running {len(scripts)} validation(s): {', '.join(n for n, _ in scripts)}" if scripts else ""))
            # 3. the validations, one SSH session each
            for name, content in scripts:
                left = scripts_timeout_s - (elapsed() - out.ready_at)
                try:
                    result = run_validation(target, nonce, content, timeout=max(left, 1.0))
                except ToolFailed:
                    out.problem = f"the validations did not finish within {scripts_timeout_s:.0f} s"
                    return out
                if isinstance(result, str):
                    out.problem = f"validation {name!r}: {result}"
                    return out
                code, text = result
                for line in text.splitlines():
                    monitor.log(f"guest:   | {line}")
                monitor.log(f"guest: validation {name!r} exited {code}")
                out.results.append((name, code, text))
            feed(vm.read_serial())
    return out
