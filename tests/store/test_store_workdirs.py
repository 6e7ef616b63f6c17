"""Work directories of killed runs: `kiln store check` reports them and `kiln gc` reclaims them,
unless kept on purpose (`.kiln-keep`) or still in use. Real owner processes hold their directory
the way a build does (RunRecorder.hold_work) and are killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from store_helpers import REPO, kiln_cmd

from kiln.config import load_config

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
