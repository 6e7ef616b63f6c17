"""`kiln vm create` against a bare QEMU boot of the same disk, and the disk ten VMs cost (issue 10).

    sudo .venv/bin/python bench/vm_create.py [--rounds N] [--home DIR --image ID]

1. Time to a usable VM: `kiln vm create` until the admin user's SSH login works (kiln waits for it
   itself), against the floor: QEMU booting the same disk (same firmware, vCPUs, memory, on a
   throwaway overlay) until its serial console prints `login:`. Rounds alternate the two.
2. Disk: ten VMs from one image, created with `--no-wait` and measured at once (before their
   guests write): the blocks their folders allocate (overlay, seed, variable store, logs) against
   the blocks the image's blob uses.

Without --home/--image it builds the image the VM tests use (Debian 12 + cloud-init, growpart and
OpenSSH by a Shell customizer) in a temporary state home that shares the tests' platform cache.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from build_common import Sample, kiln_argv, load, need, report, timed  # noqa: E402

from kiln.sandbox.vm import detect_accel, ovmf_firmware, qemu_command  # noqa: E402

IMAGE = "/subscriptions/00000000-0000-0000-0000-0000000000b1/resourceGroups/bench/providers/Microsoft.Compute/images/cloud"
MEMORY = 2048
STEP = ["export DEBIAN_FRONTEND=noninteractive", "apt-get update",
        "apt-get install -y --no-install-recommends cloud-init cloud-guest-utils openssh-server",
        "printf 'datasource_list: [ NoCloud, None ]\\n' > /etc/cloud/cloud.cfg.d/90-kiln-datasources.cfg",
        "printf 'locale: C.UTF-8\\n' > /etc/cloud/cloud.cfg.d/91-kiln-locale.cfg"]


def env(home: Path, user: Path) -> dict[str, str]:
    return {"KILN_HOME": str(home), "HOME": str(user)}


def kiln(home: Path, user: Path, *args: str) -> str:
    return subprocess.run(kiln_argv(*args), env={**os.environ, **env(home, user)}, capture_output=True, text=True,
                          check=True).stdout


def build_image(home: Path, user: Path, work: Path) -> None:
    cache = Path(os.environ.get("KILN_TEST_CACHE", "/var/tmp/kiln-test-cache")) / "kiln-home" / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    (home / "cache").symlink_to(cache)
    tpl = {"type": "Microsoft.VirtualMachineImages/imageTemplates", "apiVersion": "2022-07-01", "location": "westus2",
           "properties": {"source": {"type": "PlatformImage", "publisher": "Debian", "offer": "debian-12",
                                     "sku": "12-gen2", "version": "latest"},
                          "customize": [{"type": "Shell", "name": "cloud-init", "inline": STEP}],
                          "distribute": [{"type": "ManagedImage", "imageId": IMAGE, "location": "westus2",
                                          "runOutputName": "cloud"}]}}
    (work / "cloud.json").write_text(json.dumps(tpl))
    print("building the image (Debian 12 + cloud-init, --no-validate)...", flush=True)
    timed(kiln_argv("build", str(work / "cloud.json"), "--no-validate"), env=env(home, user), log=work / "build.log")


def bare_boot(blob: Path, work: Path, cpus: int, timeout: float = 1200) -> Sample:
    """QEMU on a throwaway overlay of `blob` until the serial console shows a login prompt."""
    overlay, serial = work / "bare.qcow2", work / "bare-serial.log"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(blob), "-F", "vpc", str(overlay)], check=True)
    code, vars_template = ovmf_firmware()
    vars_copy = work / "bare-vars.fd"
    shutil.copyfile(vars_template, vars_copy)
    serial.write_bytes(b"")
    argv = qemu_command(overlay, "qcow2", firmware_code=code, firmware_vars=vars_copy, accel=detect_accel(), cpus=cpus,
                        memory_mib=MEMORY, serial_log=serial)
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        while time.monotonic() - t0 < timeout:
            if re.search(rb"login: ", serial.read_bytes()):
                wall = time.monotonic() - t0
                usage = _cpu(proc.pid)
                return Sample(wall, usage)
            if proc.poll() is not None:
                raise SystemExit(f"the bare boot exited {proc.returncode}; serial: {serial}")
            time.sleep(0.2)
        raise SystemExit(f"no login prompt within {timeout} s; serial: {serial}")
    finally:
        proc.kill()
        proc.wait()
        overlay.unlink(missing_ok=True)


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def vm_create(home: Path, user: Path, image: str, name: str, work: Path) -> Sample:
    s = timed(kiln_argv("vm", "create", name, "--image", image, "--memory", str(MEMORY)), env=env(home, user),
              log=work / f"{name}.log")
    kiln(home, user, "vm", "delete", name, "--grace", "5")
    return s


def used(path: Path) -> int:
    return sum(p.lstat().st_blocks * 512 for p in [path, *path.rglob("*")] if not p.is_symlink())


def ten_vms(home: Path, user: Path, image: str) -> str:
    info = json.loads(kiln(home, user, "image", "show", image, "--json"))
    blob = Path(info["kiln"]["path"])
    image_used = blob.stat().st_blocks * 512
    dirs = []
    try:
        for i in range(10):
            vm = json.loads(kiln(home, user, "vm", "create", f"many{i}", "--image", image, "--no-wait",
                                 "--memory", "512", "--json"))
            dirs.append(Path(vm["kiln"]["dir"]))
        extra = sum(used(d) for d in dirs)
    finally:
        for i in range(len(dirs)):
            kiln(home, user, "vm", "delete", f"many{i}", "--grace", "1")
    text = ("### Ten VMs from one image: disk used before they write\n\n"
            f"| image blob used | ten VMs' folders used | per VM | ratio |\n|---|---|---|---|\n"
            f"| {image_used / 2**20:.1f} MiB | {extra / 2**20:.2f} MiB | {extra / 10 / 2**10:.0f} KiB | "
            f"{100 * extra / image_used:.2f} % (goal < 1 %) |\n")
    print(text, flush=True)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--home", type=Path, help="a state home that holds --image (default: build one)")
    ap.add_argument("--image", default=IMAGE)
    args = ap.parse_args()
    need("qemu-system-x86_64", "qemu-img", "ssh", "xorriso", "bwrap")
    with tempfile.TemporaryDirectory(prefix="kiln-bench-vm-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        user = work / "user"
        user.mkdir()
        home = args.home or work / "home"
        home.mkdir(exist_ok=True)
        image = args.image
        if args.home is None:
            build_image(home, user, work)
        blob = Path(json.loads(kiln(home, user, "image", "show", image, "--json"))["kiln"]["path"])
        cpus = 1 if detect_accel() == "tcg" else 2  # what kiln vm create gives a VM by default
        print(f"{load()}; accel {detect_accel()}, {cpus} vCPU, {MEMORY} MiB", flush=True)
        bare: list[Sample] = []
        made: list[Sample] = []
        for r in range(args.rounds):
            bare.append(bare_boot(blob, work, cpus))
            print(f"round {r + 1}: bare QEMU to login prompt {bare[-1]}", flush=True)
            made.append(vm_create(home, user, image, f"bench{r}", work))
            print(f"round {r + 1}: kiln vm create to SSH login {made[-1]}", flush=True)
        report("kiln vm create until SSH login vs a bare QEMU boot until its login prompt (goal 1.2x)",
               [("bare QEMU boot, serial `login:`", bare), ("kiln vm create, SSH login works", made)],
               "bare QEMU boot, serial `login:`")
        ten_vms(home, user, image)


if __name__ == "__main__":
    main()
