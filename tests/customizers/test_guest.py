"""In-VM validations as the guest runs them: each step type writes its script, the guest's rules judge it.

The scripts come from `in_vm_scripts` (what the build hands the boot test) and run here on the host
the way the guest hook (kiln-guest-check.sh) runs them: with the interpreter of a `#!` line, else
bash, and the exit code is what the guest would report (0: the validation passed). PowerShell cannot
be installed on these machines, so a stand-in `pwsh` on PATH (a shell script that records its
arguments and the script, and exits with the script's `exit N`) takes its place. One real boot
(test_guest_boot.py) runs the same scripts in a booted image.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from envcheck import unavailable
from kiln.config import Config
from kiln.customizers import in_vm_scripts
from kiln.errors import InvalidInput
from kiln.events import NullMonitor
from kiln.template.model import PowerShellStep, ShellStep
from kiln.validate.boottest import GuestScript

FAKE_PWSH = """#!/bin/sh
for last; do :; done
echo "$@" > "$0.args"
cp "$last" "$0.ps1"
exit "$(sed -n 's/^exit //p' "$last")"
"""


def scripts(tmp_path: Path, *steps: object) -> list[GuestScript]:
    return in_vm_scripts(steps, Config(home=tmp_path / "home"), NullMonitor())


def run_as_guest(script: GuestScript, tmp_path: Path, *, pwsh: bool = True) -> tuple[int, str]:
    """Run one guest script as kiln-guest-check.sh does; return (exit code, output)."""
    path = tmp_path / "guest-script"
    path.write_bytes(script.content)
    first = script.content.split(b"\n", 1)[0].decode()
    argv = first[2:].split() if first.startswith("#!") else ["bash"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "pwsh"
    if pwsh:
        fake.write_text(FAKE_PWSH)
        fake.chmod(0o755)
    else:
        fake.unlink(missing_ok=True)
    done = subprocess.run([*argv, str(path)], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          cwd=tmp_path, env={"PATH": f"{bin_dir}:/usr/bin:/bin"}, timeout=60)
    return done.returncode, done.stdout + done.stderr


def test_shell_validation_passes_only_on_exit_0_and_stops_at_the_first_failing_line(tmp_path: Path) -> None:
    ok, three, stops = scripts(tmp_path, ShellStep(name="ok", inline=("echo shell-ok",)),
                               ShellStep(name="three", inline=("exit 3",)),
                               ShellStep(inline=("echo before", "false", "echo after")))
    assert [s.name for s in (ok, three, stops)] == ["ok", "three", "Shell-2"]
    assert run_as_guest(ok, tmp_path) == (0, "shell-ok\n")
    assert run_as_guest(three, tmp_path)[0] == 3
    code, out = run_as_guest(stops, tmp_path)
    assert code == 1 and "before" in out and "after" not in out


@pytest.mark.parametrize(("valid", "script_exit", "reported"), [
    ((0, 3), 3, 0),  # a valid code other than 0: the validation passed
    ((0, 3), 0, 0),
    ((0,), 3, 3),  # the default: only 0
    ((3,), 0, 1),  # 0 is not valid when validExitCodes leaves it out
])
def test_powershell_validation_honours_valid_exit_codes(tmp_path: Path, valid: tuple[int, ...], script_exit: int,
                                                         reported: int) -> None:
    step = PowerShellStep(name="ps", inline=("Write-Host checking", f"exit {script_exit}"), valid_exit_codes=valid)
    (script,) = scripts(tmp_path, step)
    code, out = run_as_guest(script, tmp_path)
    assert code == reported, out
    if reported != 0:
        assert f"valid exit codes: {', '.join(map(str, valid))}" in out
    # The same command as the customize step runs, on a .ps1 holding exactly the inline lines.
    args = (tmp_path / "bin/pwsh.args").read_text().split()
    assert args[:5] == ["-NoProfile", "-NonInteractive", "-ExecutionPolicy", "Bypass", "-File"]
    assert args[5].startswith("/tmp/kiln-") and args[5].endswith(".ps1") and not Path(args[5]).exists()
    assert (tmp_path / "bin/pwsh.ps1").read_text() == f"Write-Host checking\nexit {script_exit}\n"


def test_powershell_validation_without_pwsh_says_so(tmp_path: Path) -> None:
    (script,) = scripts(tmp_path, PowerShellStep(name="ps", inline=("exit 0",)))
    code, out = run_as_guest(script, tmp_path, pwsh=False)
    assert code == 127 and "PowerShell (pwsh) is not installed in this image" in out


def test_downloaded_script_runs_with_its_interpreter(tmp_path: Path, web) -> None:
    if not Path("/usr/bin/perl").is_file():
        unavailable("/usr/bin/perl is not installed (perl-base, essential in Debian)")
    perl = "#!/usr/bin/perl\nuse strict;\nmy @w = ('perl', 'says', 'hi');\nprint join('-', @w), \"\\n\";\nexit 0;\n"
    plain = "echo plain-script\nfalse\necho never\n"
    steps = (ShellStep(name="perl", script_uri=web.put("check.pl", perl),
                       sha256_checksum=hashlib.sha256(perl.encode()).hexdigest()),
             ShellStep(name="plain", script_uri=web.put("plain.sh", plain)))
    perl_script, plain_script = scripts(tmp_path, *steps)
    assert perl_script.content == perl.encode()  # the #! line stays line 1
    assert run_as_guest(perl_script, tmp_path) == (0, "perl-says-hi\n")
    code, out = run_as_guest(plain_script, tmp_path)  # no #!: bash, stopping at the first failure
    assert (code, out) == (1, "plain-script\n")


def test_validation_checksum_mismatch_names_the_validation(tmp_path: Path, web) -> None:
    url = web.put("check.sh", "exit 0\n")
    with pytest.raises(InvalidInput) as e:
        scripts(tmp_path, ShellStep(inline=("true",)), ShellStep(name="bad", script_uri=url, sha256_checksum="0" * 64))
    assert e.value.path == ".properties.validate.inVMValidations[1].sha256Checksum"
    assert "sha256 mismatch" in e.value.message
