"""Work directories of killed runs: `kiln store check` reports them and `kiln gc` reclaims them,
unless kept on purpose (`.kiln-keep`) or still in use. Real owner processes hold their directory
the way a build does (RunRecorder.hold_work) and are killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kiln.config import load_config
from store_helpers import REPO, kiln_cmd

TEST_CACHE = Path(os.environ.get("KILN_TEST_CACHE", "/var/tmp/kiln-test-cache"))

OWNER = """
import sys, time
from pathlib import Path
from kiln.pipeline.recorder import RunRecorder
work = Path(sys.argv[1])
recorder = RunRecorder(None, work.name, work / "log")
recorder.hold_work(work)
with (work / "disk.raw").open("wb") as f:  # a sparse disk with some data, as a killed boot test leaves
    f.truncate(4 << 30)
    f.write(b"x" * (6 << 20))
if len(sys.argv) > 2:
    (work / sys.argv[2]).write_text("kept for inspection\\n")
print("ready", flush=True)
time.sleep(600)
"""


def owner(work: Path, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-c", OWNER, str(work), *extra], env=env, text=True,
                            stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


def kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_killed_runs_work_dirs_are_reported_and_reclaimed(kiln_home: Path) -> None:
    work_root = load_config(kiln_home).work_dir
    assert kiln_cmd(kiln_home, "store", "check").returncode == 0
    dead, kept, live = (work_root / n for n in ("deadrun00001", "keptrun00001", "liverun00001"))
    procs = [owner(dead), owner(kept, ".kiln-keep"), owner(live)]
    stranger = work_root / "customize-abc"  # no lock: not a run's directory, gc cannot judge it
    stranger.mkdir()
    try:
        kill(procs[0])
        kill(procs[1])
        check = kiln_cmd(kiln_home, "store", "check")
        assert check.returncode == 1, check.stdout + check.stderr
        assert f"work directory {dead} (6 MiB) belongs to a run whose process is gone" in check.stdout
        assert str(kept) not in check.stdout and str(live) not in check.stdout
        assert "Traceback" not in check.stderr

        gc = kiln_cmd(kiln_home, "gc", "--json")
        assert gc.returncode == 0, gc.stderr
        report = json.loads(gc.stdout)
        assert report["workDirs"] == [str(dead)]
        assert report["bytesFreed"] >= 6 << 20
        assert not dead.exists() and kept.is_dir() and live.is_dir() and stranger.is_dir()
        assert kiln_cmd(kiln_home, "store", "check").returncode == 0

        # A pid the kernel hands out again cannot make a dead run look alive: the lock went with the
        # process. The live owner's directory goes only once it is killed.
        kill(procs[2])
        gc = json.loads(kiln_cmd(kiln_home, "gc", "--json").stdout)
        assert gc["workDirs"] == [str(live)]
        assert sorted(p.name for p in work_root.iterdir()) == ["customize-abc", "keptrun00001"]
    finally:
        for p in procs:
            if p.poll() is None:
                kill(p)


@pytest.mark.integration
def test_kill_9_of_a_build_leaves_a_work_dir_that_gc_reclaims(tmp_path: Path) -> None:
    """The real thing: `kiln build` killed with SIGKILL while a customizer runs."""
    home = tmp_path / "home"
    home.mkdir()
    shared = TEST_CACHE / "kiln-home" / "cache"  # the Debian root the factory and disk-full tests share
    shared.mkdir(parents=True, exist_ok=True)
    (home / "cache").symlink_to(shared)
    template = tmp_path / "t.json"
    template.write_text(json.dumps({
        "type": "Microsoft.VirtualMachineImages/imageTemplates", "apiVersion": "2022-07-01", "location": "westus2",
        "properties": {
            "source": {"type": "PlatformImage", "publisher": "Debian", "offer": "debian-12", "sku": "12-gen2",
                       "version": "latest"},
            "customize": [{"type": "Shell", "name": "waits", "inline": ["echo waiting-for-kill", "sleep 600"]}],
            "distribute": [{"type": "ManagedImage", "location": "westus2", "runOutputName": "out",
                            "imageId": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/images/k"}],
        }}))
    env = {**os.environ, "KILN_HOME": str(home), "PYTHONPATH": str(REPO / "src")}
    build = subprocess.Popen([sys.executable, "-m", "kiln", "build", str(template)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        work = None
        for _ in range(1800):
            logs = list((home / "runs").glob("*/customization.log"))
            if logs and "waiting-for-kill" in logs[0].read_text(errors="replace"):
                work = load_config(home).work_dir / logs[0].parent.name
                break
            assert build.poll() is None, "the build ended before its customizer ran"
            time.sleep(0.5)
        assert work is not None and work.is_dir()
        # While the build lives, its directory is its own.
        assert str(work) not in kiln_cmd(home, "store", "check").stdout
        assert json.loads(kiln_cmd(home, "gc", "--json").stdout)["workDirs"] == []
        build.send_signal(signal.SIGKILL)
        build.wait()
    finally:
        if build.poll() is None:
            build.kill()
            build.wait()
    check = kiln_cmd(home, "store", "check")
    assert check.returncode == 1 and f"work directory {work}" in check.stdout, check.stdout + check.stderr
    runs = json.loads(kiln_cmd(home, "runs", "list", "--json").stdout)
    assert runs[-1]["lastRunStatus"]["runState"] == "Failed"
    assert json.loads(kiln_cmd(home, "gc", "--json").stdout)["workDirs"] == [str(work)]
    assert not work.exists()
    assert kiln_cmd(home, "store", "check").returncode == 0
