"""Benchmark 3: customize an existing image, kiln vs Packer 1.6.6 (QEMU builder) vs virt-customize.

The same base disk for everyone: a Debian 12 image built by kiln (not counted) with a user that
has a password and SSH password logins allowed, because Packer must SSH into the guest. The work
is one shell command writing /etc/kiln/bench-marker; each measured run starts from a fresh copy
of the base (sparse copies, not counted).

- kiln: a template with a ManagedImage source (the base), one Shell step and a VHD target:
  `kiln build` (root taken out of the disk, step in an isolated root, generalized, new GPT/UEFI
  disk, **boot test** in QEMU under TCG, fixed VHD published) and `kiln build --no-validate`.
- Packer 1.6.6 (Debian's package): QEMU builder, `accelerator=tcg`, one vCPU, OVMF firmware,
  `disk_image=true` on a qcow2 of the base (it copies it: `use_backing_file` fails with QEMU 7.2),
  one `shell` provisioner over SSH, shutdown. It tests nothing and does not generalize.
- virt-customize (libguestfs-tools): `--run-command` on a qcow2 of the base. It boots its own
  appliance (TCG here), tests nothing and leaves /etc/machine-id written.

    .venv/bin/python bench/build_customize.py            # --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from build_common import (
    Sample,
    image_id,
    kiln_argv,
    load,
    managed_image_target,
    need,
    platform_source,
    report,
    shell,
    template,
    timed,
)

USER = "bench"
PASSWORD = "kiln-bench-pw"
STEP = "mkdir -p /etc/kiln && echo customized > /etc/kiln/bench-marker"
OVMF_COMBINED = Path("/usr/share/ovmf/OVMF.fd")  # code + vars in one file, for QEMU's -bios (Packer 1.6.6 has no `firmware`)


def base_template() -> dict:
    return template("bench-base", platform_source(), [shell(
        "ssh-user",
        "set -eu",
        f"useradd -m -s /bin/bash {USER}",
        f"echo '{USER}:{PASSWORD}' | chpasswd",
        f"echo '{USER} ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/{USER}",
        "chmod 440 /etc/sudoers.d/" + USER,
        "mkdir -p /etc/ssh/sshd_config.d",
        "echo 'PasswordAuthentication yes' > /etc/ssh/sshd_config.d/50-bench.conf",
    )], [managed_image_target("bench-base")])


def customize_template(vhd: Path) -> dict:
    return template("bench-customize", {"type": "ManagedImage", "imageId": image_id("bench-base")},
                    [shell("marker", "set -eu", STEP)],
                    [{"type": "VHD", "runOutputName": "bench-vhd", "uri": vhd.as_uri()}], disk_gb=None)


def packer_template(base_qcow2: Path, out: Path) -> dict:
    return {
        "builders": [{
            "type": "qemu", "accelerator": "tcg",
            "qemuargs": [["-machine", "type=q35,accel=tcg"], ["-cpu", "max"], ["-bios", str(OVMF_COMBINED)]],
            # One vCPU, as kiln's boot test under TCG (two are slower here), and no boot_wait:
            # Packer's best settings on this host.
            "cpus": 1, "memory": 1536, "headless": True, "boot_wait": "0s",
            "disk_image": True, "iso_url": base_qcow2.as_uri(), "iso_checksum": "none",
            # use_backing_file would be Packer's fastest mode, but 1.6.6 calls qemu-img without the
            # backing format, which QEMU 7.2 refuses: Packer copies the base image instead.
            "format": "qcow2", "use_backing_file": False, "skip_resize_disk": True, "skip_compaction": True,
            "disk_interface": "virtio", "net_device": "virtio-net",
            "communicator": "ssh", "ssh_username": USER, "ssh_password": PASSWORD, "ssh_timeout": "15m",
            "shutdown_command": "sudo shutdown -P now",
            "output_directory": str(out), "vm_name": "customized.qcow2",
        }],
        "provisioners": [{"type": "shell", "execute_command": "sudo sh -c '{{ .Vars }} {{ .Path }}'", "inline": [STEP]}],
    }


def stored_disk(home: Path, name: str) -> Path:
    from kiln.config import load_config
    from kiln.store import Store

    store = Store.open(load_config(home))
    return Path(store.images.get(image_id(name)).disk.path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    ap.add_argument("--home", type=Path, help="a kiln state home to reuse (its root cache saves a bootstrap)")
    args = ap.parse_args()
    need("packer", "virt-customize", "qemu-img", "mmdebstrap")
    if not OVMF_COMBINED.is_file():
        raise SystemExit(f"{OVMF_COMBINED} is missing (Debian's ovmf package ships it)")
    base = Path(tempfile.mkdtemp(prefix="kiln-bench-customize-", dir=args.dir))
    try:
        run(base, args.runs, args.home or base / "home")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def run(base: Path, runs: int, home: Path) -> None:
    env = {"KILN_HOME": str(home)}
    print(f"base image (not counted, {load()})", flush=True)
    (base / "base.json").write_text(json.dumps(base_template()))
    timed(kiln_argv("build", "--no-validate", str(base / "base.json")), env=env, log=base / "kiln-base.log")
    vhd = stored_disk(home, "bench-base")
    base_qcow2 = base / "base.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "vpc", "-O", "qcow2", str(vhd), str(base_qcow2)], check=True)
    # force_tcg: /dev/kvm opens on these hosts but KVM (kvm_pvm) hangs; libguestfs would try it first.
    lg_env = {"LIBGUESTFS_BACKEND": "direct", "LIBGUESTFS_BACKEND_SETTINGS": "force_tcg"}
    print(f"warm-up: virt-customize builds its appliance ({load()})", flush=True)
    scratch = base / "scratch.qcow2"
    shutil.copyfile(base_qcow2, scratch)
    timed(["virt-customize", "-a", str(scratch), "--run-command", STEP], env=lg_env, log=base / "virt-warm.log")

    rows: dict[str, list[Sample]] = {k: [] for k in ("packer", "kiln", "kiln-nv", "virt")}
    for i in range(runs):
        out = base / f"packer-{i}"
        (base / "packer.json").write_text(json.dumps(packer_template(base_qcow2, out)))
        rows["packer"].append(timed(["packer", "build", "-color=false", str(base / "packer.json")],
                                    env={"PACKER_CACHE_DIR": str(base / "packer-cache"), "CHECKPOINT_DISABLE": "1"},
                                    cwd=base, log=base / f"packer-{i}.log"))
        shutil.rmtree(out, ignore_errors=True)
        for key, extra in (("kiln", []), ("kiln-nv", ["--no-validate"])):
            vhd_out = base / f"{key}-{i}.vhd"
            (base / "customize.json").write_text(json.dumps(customize_template(vhd_out)))
            rows[key].append(timed(kiln_argv("build", *extra, str(base / "customize.json")), env=env,
                                   log=base / f"{key}-{i}.log"))
            vhd_out.unlink(missing_ok=True)
        shutil.copyfile(base_qcow2, scratch)
        rows["virt"].append(timed(["virt-customize", "-a", str(scratch), "--run-command", STEP], env=lg_env,
                                  log=base / f"virt-{i}.log"))
        print(f"run {i + 1}: " + ", ".join(f"{k} {v[-1]}" for k, v in rows.items()) + f" ({load()})", flush=True)
    report("Customize an existing image (one shell command): kiln vs Packer 1.6.6 QEMU builder vs virt-customize",
           [("Packer 1.6.6 qemu, tcg, one shell provisioner", rows["packer"]),
            ("virt-customize --run-command", rows["virt"]),
            ("kiln build (with boot test), VHD out", rows["kiln"]),
            ("kiln build --no-validate, VHD out", rows["kiln-nv"])],
           base="Packer 1.6.6 qemu, tcg, one shell provisioner")
    if os.environ.get("KILN_BENCH_KEEP"):
        print(f"kept {base}")


if __name__ == "__main__":
    main()
