"""A build that fails, times out or is interrupted leaves the store as it was and the host clean:
no mount, no process, no work directory left behind, and the run recorded with AIB's state."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import RG, SUB, Kiln

pytestmark = pytest.mark.integration

IMAGE_ID = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/images/never-published"


def template(tmp: Path, customize: list[dict], **props: object) -> Path:
    data = {
        "type": "Microsoft.VirtualMachineImages/imageTemplates",
        "apiVersion": "2022-07-01",
        "location": "westus2",
        "properties": {
            "source": {"type": "PlatformImage", "publisher": "Debian", "offer": "debian-12", "sku": "12-gen2", "version": "latest"},
            "customize": customize,
            "distribute": [{"type": "ManagedImage", "imageId": IMAGE_ID, "location": "westus2", "runOutputName": "never"}],
            **props,
        },
    }
    path = tmp / "template.json"
    path.write_text(json.dumps(data))
    return path


def store_state(kiln: Kiln) -> dict:
    """What a user could see of the store: catalog listings and the blob files."""
    blobs = kiln.home / "blobs"
    return {
        "images": kiln.json("image", "list"),
        "galleries": kiln.json("gallery", "list"),
        "blobs": sorted(str(p.relative_to(blobs)) for p in blobs.rglob("*")) if blobs.exists() else [],
    }


def assert_host_clean(kiln: Kiln) -> None:
    home = str(kiln.home)
    mounts = [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if home in line]
    assert mounts == [], mounts
    leftovers = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if home in cmdline and int(pid) != os.getpid():
            leftovers.append(cmdline)
    assert leftovers == [], leftovers
    work = kiln.home / "work"
    assert not work.exists() or list(work.iterdir()) == []


def last_run(kiln: Kiln) -> dict:
    return kiln.json("runs", "list")[-1]


def test_failing_customizer(kiln: Kiln, tmp_path: Path) -> None:
    before = store_state(kiln)
    path = template(tmp_path, [
        {"type": "Shell", "name": "works", "inline": ["echo fine > /etc/kiln-step-one"]},
        {"type": "Shell", "name": "breaks", "inline": ["echo about to fail", "exit 7"]},
    ])
    proc = kiln("build", str(path), check=False)
    assert proc.returncode == 1
    assert "breaks" in proc.stderr and "7" in proc.stderr and "about to fail" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert last_run(kiln)["lastRunStatus"]["runState"] == "Failed"
    assert store_state(kiln) == before
    assert_host_clean(kiln)


def test_checksum_mismatch_runs_nothing(kiln: Kiln, tmp_path: Path, samples_web: str) -> None:
    before = store_state(kiln)
    path = template(tmp_path, [
        {"type": "Shell", "name": "tampered", "scriptUri": samples_web + "quickquickstarts/customizeScript.sh",
         "sha256Checksum": "0" * 64},
    ])
    proc = kiln("build", str(path), check=False)
    assert proc.returncode == 2, proc.stderr
    assert "sha256 mismatch" in proc.stderr and "template.json:.properties.customize[0].sha256Checksum" in proc.stderr
    log = Path(last_run(kiln)["logPath"]).read_text()
    assert "customizeScript.sh running" not in log
    assert store_state(kiln) == before
    assert_host_clean(kiln)


def test_timeout(kiln: Kiln, tmp_path: Path) -> None:
    before = store_state(kiln)
    path = template(tmp_path, [{"type": "Shell", "name": "slow", "inline": ["sleep 600"]}], buildTimeoutInMinutes=1)
    proc = kiln("build", str(path), check=False)
    assert proc.returncode == 1
    assert "timed out" in proc.stderr
    run = last_run(kiln)["lastRunStatus"]
    assert run["runState"] == "Failed" and "timed out" in run["message"]
    assert store_state(kiln) == before
    assert_host_clean(kiln)


def test_ctrl_c_cancels(kiln: Kiln, tmp_path: Path) -> None:
    before = store_state(kiln)
    path = template(tmp_path, [{"type": "Shell", "name": "waits", "inline": ["echo waiting-for-ctrl-c", "sleep 600"]}])
    env = {**os.environ, "KILN_HOME": str(kiln.home)}
    proc = subprocess.Popen([sys.executable, "-m", "kiln", "build", str(path)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            runs = kiln.json("runs", "list")
            log = Path(runs[-1]["logPath"]) if runs and runs[-1]["lastRunStatus"]["runState"] == "Running" else None
            if log and log.exists() and "waiting-for-ctrl-c" in log.read_text(errors="replace"):
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert last_run(kiln)["lastRunStatus"]["runState"] == "Canceled"
    assert store_state(kiln) == before
    assert_host_clean(kiln)


def test_windows_template_fails_fast(kiln: Kiln, tmp_path: Path) -> None:
    """Windows images cannot be built here: a clear error before any work, never a hang."""
    from corpus import conformance

    sample = conformance() / "aib" / "templates" / "quickquickstarts__0_Creating_a_Custom_Windows_Managed_Image__helloImageTemplateWin.json"
    identity = f"/subscriptions/{SUB}/resourcegroups/{RG}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id"
    values = {"region": "westus2", "subscriptionID": SUB, "rgName": RG, "imageName": "winImage",
              "runOutputName": "winOutput", "imgBuilderId": identity}
    text = sample.read_text()
    for key, value in values.items():
        text = text.replace(f"<{key}>", value)
    path = tmp_path / "win.json"
    path.write_text(text)
    before = store_state(kiln)
    proc = kiln("build", str(path), check=False, timeout=600)
    assert proc.returncode == 2, proc.stderr
    assert "Windows" in proc.stderr and "Traceback" not in proc.stderr
    assert store_state(kiln) == before
    assert_host_clean(kiln)
