"""Customizers run for real in a Debian 12 root: markers land, failures name their step."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from kiln.config import Config
from kiln.customizers import CustomizerFailed, run_customizers
from kiln.errors import InvalidInput
from kiln.events import Monitor
from kiln.sandbox.isolated import IsolatedRoot
from kiln.template.model import FileStep, PowerShellStep, ShellStep
from monitors import Recorder

pytestmark = pytest.mark.integration



def sha(data: str) -> str:
    return hashlib.sha256(data.encode()).hexdigest()


def customize(root: Path, steps, config: Config, mon: Monitor | None = None) -> Recorder:
    mon = mon or Recorder()
    run_customizers(tuple(steps), IsolatedRoot(root, mon), config=config, monitor=mon, os_type="Linux")
    return mon


def test_aib_sample_sequence_lands_in_the_root(fresh_root: Path, web, tmp_path: Path) -> None:
    script = "#!/bin/bash\nset -e\nmkdir -p /opt/kiln\n[[ -d /opt/kiln ]] && echo bash-ran > /opt/kiln/script1\n"
    plain = "echo no-shebang > /opt/kiln/script2\necho \"cwd=$(pwd)\"\n"
    steps = [
        ShellStep(name="RunScriptFromSource", script_uri=web.put("customizeScript.sh", script)),
        ShellStep(name="CheckSumCompareShellScript", script_uri=web.put("customizeScript2.sh", plain),
                  sha256_checksum=sha(plain)),
        FileStep(name="downloadBuildArtifacts", source_uri=web.put("index.html", "<h1>kiln</h1>\n"),
                 destination="/tmp/index.html"),
        ShellStep(name="setupBuildPath", inline=("sudo mkdir /buildArtifacts",
                                                 "sudo cp /tmp/index.html /buildArtifacts/index.html")),
        FileStep(name="nested", source_uri=web.url + "index.html", destination="/srv/www/new/"),
    ]
    mon = customize(fresh_root, steps, Config(home=tmp_path))
    assert (fresh_root / "opt/kiln/script1").read_text() == "bash-ran\n"
    assert (fresh_root / "opt/kiln/script2").read_text() == "no-shebang\n"
    assert (fresh_root / "buildArtifacts/index.html").read_text() == "<h1>kiln</h1>\n"
    assert (fresh_root / "srv/www/new/index.html").stat().st_mode & 0o777 == 0o644
    assert "cwd=/tmp" in mon.text
    steps_seen = [(e.kind, e.name) for e in mon.events if e.kind in ("step", "result")]
    assert steps_seen == [(k, f"customize[{i}]") for i in range(5) for k in ("step", "result")]
    assert not list(fresh_root.glob("run/kiln*")) and not (fresh_root / "usr/sbin/policy-rc.d").exists()


def test_package_install_starts_no_service(fresh_root: Path, tmp_path: Path) -> None:
    mon = customize(fresh_root, [ShellStep(name="cron", inline=(
        "apt-get update -qq", "apt-get install -y -qq cron", "systemctl is-enabled cron"))], Config(home=tmp_path))
    assert (fresh_root / "usr/sbin/cron").exists()
    assert "policy-rc.d denied execution of start" in mon.text or "invoke-rc.d: policy-rc.d denied" in mon.text


def test_failing_step_names_step_exit_code_and_tail(fresh_root: Path, tmp_path: Path) -> None:
    steps = [
        ShellStep(name="first", inline=("touch /first-ran",)),
        ShellStep(name="breaks", inline=("echo before-the-failure", "sh -c 'exit 42'", "echo after")),
        ShellStep(name="never", inline=("touch /never-ran",)),
    ]
    with pytest.raises(CustomizerFailed) as e:
        customize(fresh_root, steps, Config(home=tmp_path))
    err = e.value
    assert err.returncode == 42 and err.step.index == 1 and err.step.name == "breaks"
    assert "'breaks'" in err.message and "customize[1]" in err.message and "exit code 42" in err.message
    assert "before-the-failure" in err.message and "after" not in err.tail
    assert err.exit_code == 1
    assert (fresh_root / "first-ran").exists() and not (fresh_root / "never-ran").exists()


def test_checksum_mismatch_runs_nothing(fresh_root: Path, web, tmp_path: Path) -> None:
    steps = [
        ShellStep(name="marker", inline=("touch /marker-ran",)),
        ShellStep(name="tampered", script_uri=web.put("s.sh", "echo changed\n"), sha256_checksum=sha("echo original\n")),
    ]
    with pytest.raises(InvalidInput) as e:
        customize(fresh_root, steps, Config(home=tmp_path))
    assert "sha256 mismatch" in e.value.message and e.value.path == ".properties.customize[1].sha256Checksum"
    assert not (fresh_root / "marker-ran").exists()


def test_destination_escapes_are_refused(fresh_root: Path, web, tmp_path: Path) -> None:
    url = web.put("f.txt", "data\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (fresh_root / "opt/up").symlink_to("../../../../../../../../" + str(outside).lstrip("/"))
    for dest in ("/../../etc/escaped", "/opt/up/escaped", "relative/path"):
        with pytest.raises(InvalidInput) as e:
            customize(fresh_root, [FileStep(name="esc", source_uri=url, destination=dest)], Config(home=tmp_path))
        assert e.value.path == ".properties.customize[0].destination"
    assert list(outside.iterdir()) == []
    # An absolute symlink is followed the way the guest sees it: inside the root, never on the host.
    (fresh_root / "opt/abs").symlink_to(str(outside))
    customize(fresh_root, [FileStep(name="abs", source_uri=url, destination="/opt/abs/in-root.txt")], Config(home=tmp_path))
    assert list(outside.iterdir()) == []
    assert (fresh_root / str(outside).lstrip("/") / "in-root.txt").read_text() == "data\n"


def test_powershell_needs_pwsh_in_the_image(fresh_root: Path, tmp_path: Path) -> None:
    step = PowerShellStep(name="ps-step", inline=("Write-Host hi",))
    with pytest.raises(CustomizerFailed) as e:
        customize(fresh_root, [step], Config(home=tmp_path))
    assert "'ps-step'" in e.value.message and "pwsh" in e.value.message


def test_powershell_valid_exit_codes(fresh_root: Path, tmp_path: Path) -> None:
    # PowerShell cannot be installed on these machines, so a stand-in `pwsh` (a shell script that
    # records its arguments and exits with the code the test asks for) takes its place.
    fake = fresh_root / "usr/bin/pwsh"
    fake.write_text('#!/bin/sh\necho "$@" > /pwsh-args\nexit "$(cat /pwsh-exit)"\n')
    fake.chmod(0o755)
    (fresh_root / "pwsh-exit").write_text("3\n")
    ok = PowerShellStep(name="ps", inline=("exit 3",), valid_exit_codes=(0, 3))
    customize(fresh_root, [ok], Config(home=tmp_path))
    assert "-File /run/kiln/step-0.ps1" in (fresh_root / "pwsh-args").read_text()
    with pytest.raises(CustomizerFailed) as e:
        customize(fresh_root, [PowerShellStep(name="ps", inline=("exit 3",))], Config(home=tmp_path))
    assert e.value.returncode == 3 and "valid exit codes: 0" in e.value.message
