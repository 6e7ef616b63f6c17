"""One real boot: a built Debian 12 image runs in-VM validations of every kind the steps write.

The image is the shared Debian 12 root assembled into a disk, with a stand-in `pwsh` (PowerShell
cannot be installed on these machines: a shell script that exits with its script's `exit N`). The
validations go through `in_vm_scripts`, exactly as a build hands them to the boot test, and each
exit code is the one the guest reported on its serial console.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from envcheck import unavailable
from kiln.config import Config
from kiln.customizers import in_vm_scripts
from kiln.events import NullMonitor
from kiln.template.model import FileStep, PowerShellStep, ShellStep

pytestmark = pytest.mark.integration

STAND_IN_PWSH = """#!/bin/sh
for last; do :; done
exit "$(sed -n 's/^exit //p' "$last")"
"""
PERL = '#!/usr/bin/perl\nuse strict;\nmy $who = "perl";\nprint "$who runs as $^X\\n";\nexit 0;\n'


def test_validations_run_in_the_booted_image(fresh_root: Path, web, tmp_path: Path) -> None:
    for tool in ("qemu-system-x86_64", "mkfs.ext4", "sgdisk", "mcopy"):
        if shutil.which(tool) is None:
            unavailable(f"{tool} is not installed (run scripts/setup)")
    from kiln.disk.assemble import assemble_disk
    from kiln.validate.boottest import boot_test

    pwsh = fresh_root / "usr/local/bin/pwsh"
    pwsh.write_text(STAND_IN_PWSH)
    pwsh.chmod(0o755)
    layout = assemble_disk(fresh_root, tmp_path / "disk.raw", monitor=NullMonitor())
    steps = (
        ShellStep(name="perl", script_uri=web.put("check.pl", PERL),
                  sha256_checksum=hashlib.sha256(PERL.encode()).hexdigest()),
        ShellStep(name="bash", inline=('echo "bash $BASH_VERSION"',)),
        ShellStep(name="shell-exit-3", inline=("exit 3",)),
        PowerShellStep(name="ps-3-valid", inline=("exit 3",), valid_exit_codes=(0, 3)),
        PowerShellStep(name="ps-3-default", inline=("exit 3",)),
        FileStep(name="file", source_uri=web.put("data.txt", "file-data\n"), destination="/var/tmp/kiln-v/data.txt"),
        ShellStep(name="file-landed", inline=("cat /var/tmp/kiln-v/data.txt",)),
    )
    scripts = in_vm_scripts(steps, Config(home=tmp_path / "home"), NullMonitor())
    report = boot_test(layout.path, "raw", scripts=scripts, timeout_s=600, monitor=NullMonitor(),
                       serial_log=tmp_path / "serial.log", work_dir=tmp_path / "work")
    assert report.marker_seen, report.message
    results = {r.name: r for r in report.results}
    assert {name: r.exit_code for name, r in results.items()} == {
        "perl": 0, "bash": 0, "shell-exit-3": 3, "ps-3-valid": 0, "ps-3-default": 3, "file": 0, "file-landed": 0,
    }, report.message
    assert "perl runs as /usr/bin/perl" in results["perl"].output_tail
    assert "bash 5." in results["bash"].output_tail
    assert "valid exit codes: 0" in results["ps-3-default"].output_tail
    assert "file-data" in results["file-landed"].output_tail
    # As the build judges it: the failed validations are the two whose code is not valid.
    assert "validation 'shell-exit-3' exited 3" in report.message and "'ps-3-valid'" not in report.message
