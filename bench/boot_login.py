"""Benchmark: the build's SSH-login boot test against a bare QEMU boot of the same disk (issue 10).

One disk for both: a Debian 12 image built by kiln (not counted) with cloud-init, growpart and
sshd added by a Shell step (what kiln's platform images will carry), NoCloud first in its
datasource_list. Side by side, alternating, in one run:

- kiln's boot test, as the build runs it (`kiln.validate.boottest.boot_test`): a NoCloud seed with
  an ephemeral key for a throwaway user, SSH login through 127.0.0.1, `cloud-init status --wait`,
  one Shell validation as root over SSH; QEMU on a throwaway overlay. Its report gives the time to
  the first SSH login and to cloud-init done.
- the floor: a bare QEMU boot of the same disk (same machine, firmware, vCPUs, memory, overlay,
  kiln's own QEMU command line) until its serial console shows the `login:` prompt; no seed.

Then one more boot test prints where the guest's first boot spends its time (`systemd-analyze`,
`blame`, `critical-chain`, `cloud-init analyze blame`).

    .venv/bin/python bench/boot_login.py            # --runs 2
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from build_common import (
    image_id,
    kiln_argv,
    load,
    managed_image_target,
    need,
    platform_source,
    shell,
    template,
    timed,
)

from kiln.events import NullMonitor
from kiln.sandbox.vm import VirtualMachine
from kiln.validate.boottest import GuestScript, boot_test, boot_test_cpus

TIMEOUT_S = 900.0
CLOUD_INIT = shell(
    "add-cloud-init",
    "export DEBIAN_FRONTEND=noninteractive",
    "apt-get update -qq",
    "apt-get install -y -qq --no-install-recommends cloud-init cloud-guest-utils openssh-server",
    "printf 'datasource_list: [ NoCloud, None ]\\nlocale: C.UTF-8\\n' > /etc/cloud/cloud.cfg.d/90-kiln-bench.cfg",
)
VALIDATION = GuestScript("bench", b"set -e\nid -u\ncloud-init status\n")
PROFILE = GuestScript("where-time-goes", b"""
systemd-analyze || true
echo '--- blame'; systemd-analyze blame | head -20
echo '--- critical-chain'; systemd-analyze critical-chain | head -30
echo '--- cloud-init'; cloud-init analyze blame 2>/dev/null | head -25
""")
LOGIN_PROMPT = re.compile(r"\S login: ")


def bare_boot(disk: Path, fmt: str, work: Path) -> float:
    """Seconds from QEMU's start to the `login:` prompt on the serial console (kiln's VM runner,
    no seed, no check disk)."""
    t0 = time.monotonic()
    seen = ""
    with VirtualMachine(disk, fmt, work_dir=work, cpus=boot_test_cpus(), memory_mib=1536, monitor=NullMonitor()) as vm:
        while time.monotonic() - t0 < TIMEOUT_S:
            seen = (seen + vm.read_serial())[-4000:]
            if LOGIN_PROMPT.search(re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", seen)):
                return time.monotonic() - t0
            if vm.poll() is not None:
                raise SystemExit(f"the bare boot ended early: {vm.qemu_output()[-1000:]}")
            time.sleep(0.25)
    raise SystemExit(f"no login prompt within {TIMEOUT_S:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    ap.add_argument("--home", type=Path, help="a kiln state home to reuse (its root cache saves a bootstrap)")
    ap.add_argument("--no-profile", action="store_true", help="skip the boot that prints where the time goes")
    args = ap.parse_args()
    need("qemu-system-x86_64", "mmdebstrap", "ssh", "xorriso")
    base = Path(tempfile.mkdtemp(prefix="kiln-bench-login-", dir=args.dir))
    try:
        run(base, args.runs, args.home or base / "home", profile=not args.no_profile)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def run(base: Path, runs: int, home: Path, *, profile: bool) -> None:
    from kiln.config import load_config
    from kiln.store import Store

    print(f"image with cloud-init (not counted, {load()})", flush=True)
    (base / "image.json").write_text(json.dumps(template("bench-login", platform_source(), [CLOUD_INIT],
                                                         [managed_image_target("bench-login")])))
    timed(kiln_argv("build", "--no-validate", str(base / "image.json")), env={"KILN_HOME": str(home)},
          log=base / "kiln-image.log")
    disk = Store.open(load_config(home)).images.get(image_id("bench-login")).disk
    rows: dict[str, list[float]] = {"bare": [], "kiln": [], "ssh": [], "cloud-init": []}
    for i in range(runs):
        rows["bare"].append(bare_boot(disk.path, disk.format, base / "work"))
        report = boot_test(disk.path, disk.format, scripts=[VALIDATION], timeout_s=TIMEOUT_S, monitor=NullMonitor(),
                           serial_log=base / f"kiln-{i}.serial", work_dir=base / "work")
        if not report.ok or report.check != "ssh-login":
            raise SystemExit(f"the boot test failed ({report.check}): {report.message[-3000:]}")
        assert report.login_seconds is not None and report.ready_seconds is not None
        rows["kiln"].append(report.seconds)
        rows["ssh"].append(report.login_seconds)
        rows["cloud-init"].append(report.ready_seconds)
        print(f"run {i + 1}: bare boot to login: {rows['bare'][-1]:.1f} s; kiln boot test {report.seconds:.1f} s "
              f"(SSH login at {report.login_seconds:.1f} s, cloud-init done at {report.ready_seconds:.1f} s) "
              f"({load()})", flush=True)
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"\n### Boot test with SSH login vs bare boot to `login:` (TCG, {boot_test_cpus()} vCPU)\n\n{load()}\n\n"
          "| what | runs (wall s) | median | vs bare |\n|---|---|---|---|")
    for key, name in (("bare", "bare QEMU boot to the serial `login:` prompt"),
                      ("ssh", "kiln: QEMU start to the first SSH login"),
                      ("cloud-init", "kiln: ... to `cloud-init status` done"),
                      ("kiln", "kiln boot test, whole (seed, login, cloud-init, 1 validation, stop)")):
        runs_text = ", ".join(f"{s:.1f}" for s in rows[key])
        print(f"| {name} | {runs_text} | {med[key]:.1f} s | {med[key] / med['bare']:.2f}x |")
    print(f"\nratio kiln boot test / bare boot: {med['kiln'] / med['bare']:.2f}x (goal: within 1.2x)", flush=True)
    if profile:
        report = boot_test(disk.path, disk.format, scripts=[PROFILE], timeout_s=TIMEOUT_S, monitor=NullMonitor(),
                           work_dir=base / "work")
        print("\n### Where the first boot's time goes (one more boot test)\n")
        print(report.results[0].output_tail if report.results else report.message[-3000:])


if __name__ == "__main__":
    main()
