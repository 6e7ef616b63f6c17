"""Benchmark: the build's SSH-login boot test against a bare QEMU boot of the same disk (issue 10).

One disk for every boot: kiln's Debian 12 platform image (cloud-init with its NoCloud, ConfigDrive,
Azure and None datasources, growpart, sshd), built by kiln with `--no-validate` (not counted).
Alternating, in one run, same vCPUs, memory, firmware and QEMU command line (kiln's own):

- bare: the disk with no seed until the serial console shows `login:` (the issue's floor). With no
  datasource found, ds-identify leaves cloud-init off: this boot runs none of its four stages.
- seeded: the disk with a NoCloud seed like the boot test's (a new user and key, on a virtio
  disk), no SSH, no kiln: until `login:`, and until cloud-init's final stage prints
  `Cloud-init v. ... finished` on the console. What the guest's own first-boot provisioning costs,
  whoever asks for it.
- kiln: the boot test as the build runs it (`kiln.validate.boottest.boot_test`): ephemeral key,
  NoCloud seed, SSH login through 127.0.0.1, cloud-init's last stage, one Shell validation as root
  over SSH, QEMU stopped. Its report gives the time to the first SSH login and to cloud-init done.

Then one more boot test prints where the guest's first boot spends its time (`systemd-analyze`,
`blame`, `critical-chain`, `cloud-init analyze blame`) and what one start of Python and of
cloud-init's code costs in the guest (each of cloud-init's four stages is one).

    .venv/bin/python bench/boot_login.py            # --runs 2 [--home STATE_HOME] [--offer debian-13]
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
    template,
    timed,
)

from kiln.access.keys import make_key
from kiln.access.seed import Seed, write_seed
from kiln.events import NullMonitor
from kiln.sandbox.vm import DataDisk, VirtualMachine
from kiln.validate.boottest import GuestScript, boot_test, boot_test_cpus
from kiln.validate.login import SEED_SERIAL

TIMEOUT_S = 900.0
# A typical cheap inVMValidation (AIB's samples test for files): no Python start of its own.
VALIDATION = GuestScript("bench", b"set -e\nid -u\ntest -s /etc/machine-id\n")
PROFILE = GuestScript("where-time-goes", b"""
systemd-analyze || true
echo '--- blame'; systemd-analyze blame | head -20
echo '--- critical-chain'; systemd-analyze critical-chain | head -30
echo '--- cloud-init'; cloud-init analyze blame 2>/dev/null | head -25
echo '--- one Python start, and one import of the cloud-init entry point (each stage pays both)'
time -p python3 -c pass 2>&1
time -p python3 -c 'import cloudinit.cmd.main' 2>&1
""")
LOGIN_PROMPT = re.compile(r"\S login: ")
CLOUD_INIT_FINISHED = re.compile(r"Cloud-init v\. \S+ finished at")


def bare_boot(disk: Path, fmt: str, work: Path, *, seeded: bool) -> tuple[float, float | None]:
    """Seconds from QEMU's start to the `login:` prompt on the serial console, and (with a seed) to
    cloud-init's final message there; kiln's VM runner, nothing logs in."""
    disks = []
    if seeded:
        key = make_key(work / f"seed-key-{time.monotonic_ns()}")
        iso = write_seed(Seed(f"bench-{time.monotonic_ns()}", "bench", "bench-user", (key.public,)), work / "seed.iso")
        disks = [DataDisk(SEED_SERIAL, iso.read_bytes())]
    t0 = time.monotonic()
    seen, login = "", None
    with VirtualMachine(disk, fmt, work_dir=work, cpus=boot_test_cpus(), memory_mib=1536, monitor=NullMonitor(),
                        data_disks=disks) as vm:
        while time.monotonic() - t0 < TIMEOUT_S:
            seen = (seen + re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", vm.read_serial()))[-20000:]
            if login is None and LOGIN_PROMPT.search(seen):
                login = time.monotonic() - t0
                if not seeded:
                    return login, None
            if login is not None and CLOUD_INIT_FINISHED.search(seen):
                return login, time.monotonic() - t0
            if vm.poll() is not None:
                raise SystemExit(f"the bare boot ended early: {vm.qemu_output()[-1000:]}")
            time.sleep(0.25)
    raise SystemExit(f"no login prompt{' and cloud-init final message' if seeded else ''} within {TIMEOUT_S:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    ap.add_argument("--home", type=Path, help="a kiln state home to reuse (its root cache saves a bootstrap)")
    ap.add_argument("--offer", default="debian-12", help="the Debian platform image offer (debian-12, debian-13)")
    ap.add_argument("--no-profile", action="store_true", help="skip the boot that prints where the time goes")
    args = ap.parse_args()
    need("qemu-system-x86_64", "mmdebstrap", "ssh", "xorriso")
    base = Path(tempfile.mkdtemp(prefix="kiln-bench-login-", dir=args.dir))
    try:
        run(base, args.runs, args.home or base / "home", profile=not args.no_profile, offer=args.offer)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def run(base: Path, runs: int, home: Path, *, profile: bool, offer: str) -> None:
    from kiln.config import load_config
    from kiln.store import Store

    print(f"{offer} platform image (not counted, {load()})", flush=True)
    (base / "image.json").write_text(json.dumps(template("bench-login", platform_source(offer), [],
                                                         [managed_image_target("bench-login")])))
    timed(kiln_argv("build", "--no-validate", str(base / "image.json")), env={"KILN_HOME": str(home)},
          log=base / "kiln-image.log")
    disk = Store.open(load_config(home)).images.get(image_id("bench-login")).disk
    rows: dict[str, list[float]] = {"bare": [], "seeded-login": [], "seeded-done": [], "kiln": [], "ssh": [],
                                    "cloud-init": []}
    (base / "work").mkdir(parents=True, exist_ok=True)
    for i in range(runs):
        rows["bare"].append(bare_boot(disk.path, disk.format, base / "work", seeded=False)[0])
        login, done = bare_boot(disk.path, disk.format, base / "work", seeded=True)
        assert done is not None
        rows["seeded-login"].append(login)
        rows["seeded-done"].append(done)
        report = boot_test(disk.path, disk.format, scripts=[VALIDATION], timeout_s=TIMEOUT_S, monitor=NullMonitor(),
                           serial_log=base / f"kiln-{i}.serial", work_dir=base / "work")
        if not report.ok or report.check != "ssh-login":
            raise SystemExit(f"the boot test failed ({report.check}): {report.message[-3000:]}")
        assert report.login_seconds is not None and report.ready_seconds is not None
        rows["kiln"].append(report.seconds)
        rows["ssh"].append(report.login_seconds)
        rows["cloud-init"].append(report.ready_seconds)
        print(f"run {i + 1}: bare boot to login: {rows['bare'][-1]:.1f} s; seeded boot to login {login:.1f} s, "
              f"to cloud-init's final message {done:.1f} s; kiln boot test {report.seconds:.1f} s "
              f"(SSH login at {report.login_seconds:.1f} s, cloud-init done at {report.ready_seconds:.1f} s) "
              f"({load()})", flush=True)
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"\n### Boot test with SSH login vs bare boot to `login:` (TCG, {boot_test_cpus()} vCPU)\n\n{load()}\n\n"
          "| what | runs (wall s) | median | vs bare | vs seeded, done |\n|---|---|---|---|---|")
    for key, name in (("bare", "bare QEMU boot to the serial `login:` prompt (cloud-init off: no datasource)"),
                      ("seeded-login", "seeded boot (NoCloud, no kiln) to `login:`"),
                      ("seeded-done", "seeded boot to cloud-init's final message"),
                      ("ssh", "kiln: QEMU start to the first SSH login"),
                      ("cloud-init", "kiln: ... to `cloud-init status` done"),
                      ("kiln", "kiln boot test, whole (seed, login, cloud-init, 1 validation, stop)")):
        runs_text = ", ".join(f"{s:.1f}" for s in rows[key])
        print(f"| {name} | {runs_text} | {med[key]:.1f} s | {med[key] / med['bare']:.2f}x | "
              f"{med[key] / med['seeded-done']:.2f}x |")
    print(f"\nratio kiln boot test / bare boot: {med['kiln'] / med['bare']:.2f}x (goal: within 1.2x); "
          f"kiln boot test / the guest's own seeded first boot: {med['kiln'] / med['seeded-done']:.2f}x", flush=True)
    if profile:
        report = boot_test(disk.path, disk.format, scripts=[PROFILE], timeout_s=TIMEOUT_S, monitor=NullMonitor(),
                           work_dir=base / "work")
        print("\n### Where the first boot's time goes (one more boot test)\n")
        print(report.results[0].output_tail if report.results else report.message[-3000:])


if __name__ == "__main__":
    main()
