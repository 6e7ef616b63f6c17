"""The process layer: run(), spawn(), run_streamed(); whose problem a failure is, and nothing left running."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kiln.errors import BuildFailed, HostFailed
from kiln.run import CommandFailed, ToolFailed, run, run_streamed, spawn
from kiln.tools import ToolMissing
from monitors import Lines
from processes import alive, eventually

REPO = Path(__file__).resolve().parent.parent




# -- a program that is not installed


@pytest.fixture
def empty_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A host where none of kiln's tools is installed (the children's PATH comes from kiln's)."""
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))


@pytest.mark.usefixtures("empty_path")
def test_a_missing_program_names_its_debian_package_from_run_and_spawn() -> None:
    with pytest.raises(ToolMissing) as e:
        run(["bwrap", "--version"], capture=True)
    assert e.value.program == "bwrap" and e.value.package == "bubblewrap"
    assert "bwrap: not found on this host" in e.value.message
    assert "apt-get install bubblewrap" in e.value.hint and "kiln doctor" in e.value.hint
    with pytest.raises(ToolMissing):
        run(["bwrap", "--version"], check=False)  # not a returncode 127 to be misread
    with pytest.raises(ToolMissing) as e:
        spawn(["bwrap", "--version"])
    assert e.value.package == "bubblewrap"
    with pytest.raises(ToolMissing) as e:
        run_streamed(["bwrap", "--version"], Lines())
    assert e.value.package == "bubblewrap"
    # kiln always adds /usr/sbin to a child's PATH, so a missing sbin tool is shown by its path
    with pytest.raises(ToolMissing) as e:
        spawn(["/nonexistent/sbin/sfdisk", "--version"])
    assert e.value.package == "fdisk" and "apt-get install fdisk" in e.value.hint


@pytest.mark.usefixtures("empty_path")
def test_a_program_outside_the_table_points_at_setup() -> None:
    with pytest.raises(ToolMissing) as e:
        spawn(["kiln-no-such-program"])
    assert e.value.package is None and "scripts/setup" in e.value.hint


# -- failures: kiln's own tool call versus the user's command


def test_kiln_own_failing_command_is_a_host_problem_with_its_command_line() -> None:
    with pytest.raises(ToolFailed) as e:
        run(["sh", "-c", "echo partial output; echo the reason >&2; exit 3", "sfdisk-ish"], capture=True)
    err = e.value
    assert isinstance(err, HostFailed) and not isinstance(err, BuildFailed)
    assert err.exit_code == 1 and err.returncode == 3
    assert err.message.startswith("kiln's own command failed with exit code 3: ")
    assert "sh -c 'echo partial output; echo the reason >&2; exit 3' sfdisk-ish" in err.message
    assert "partial output" in err.message and "the reason" in err.message
    assert "not of the template" in err.hint and "kiln doctor" in err.hint
    # without check, the caller decides
    done = run(["sh", "-c", "echo x; exit 3"], capture=True, check=False)
    assert (done.returncode, done.stdout) == (3, "x\n")
    # separate stderr is kept apart, and both reach the error
    with pytest.raises(ToolFailed) as e:
        run(["sh", "-c", "echo on-out; echo on-err >&2; exit 1"], capture=True, stderr=subprocess.PIPE)
    assert "on-out" in e.value.message and "on-err" in e.value.message


def test_a_users_failing_command_stays_a_build_failure() -> None:
    err = CommandFailed(["apt-get", "install", "no-such-package"], 100, "E: Unable to locate package")
    assert isinstance(err, BuildFailed) and not isinstance(err, HostFailed)
    assert err.message.startswith("command failed with exit code 100: apt-get install no-such-package")
    assert "kiln's own" not in err.render()


def test_the_cli_says_whose_problem_a_failed_tool_call_is(tmp_path: Path) -> None:
    """A host problem in the middle of a command (qemu-img runs out of room converting an import)."""
    disk = tmp_path / "disk.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", disk, "16M"])
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    real = subprocess.run(["sh", "-c", "command -v qemu-img"], capture_output=True, text=True, check=True).stdout.strip()
    (bin_dir / "qemu-img").write_text(
        "#!/bin/sh\n"
        'if [ "$1" = convert ]; then echo "qemu-img: error while writing: No space left on device" >&2; exit 1; fi\n'
        f'exec {real} "$@"\n')
    (bin_dir / "qemu-img").chmod(0o755)
    home = tmp_path / "home"
    env = {**os.environ, "KILN_HOME": str(home), "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "PYTHONPATH": str(REPO / "src")}
    image = "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.Compute/images/web"
    proc = subprocess.run([sys.executable, "-m", "kiln", "--progress", "quiet", "image", "import", str(disk),
                           "--id", image, "--location", "westus2"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("kiln: error: kiln's own command failed with exit code 1: qemu-img convert "), proc.stderr
    assert "No space left on device" in proc.stderr
    assert "hint: this is a problem of kiln or of this host" in proc.stderr
    assert "Traceback" not in proc.stderr
    listed = subprocess.run([sys.executable, "-m", "kiln", "image", "list", "--json"], capture_output=True, text=True,
                            env=env, timeout=120)
    assert listed.returncode == 0 and listed.stdout.strip() == "[]"


# -- timeouts, streaming, and nothing left running


def test_a_timeout_kills_the_command_and_says_so() -> None:
    with pytest.raises(ToolFailed) as e:
        run(["sh", "-c", "echo $$; exec sleep 300"], capture=True, timeout=1)
    assert e.value.timed_out
    assert "kiln's own command timed out after 1 s: sh -c 'echo $$; exec sleep 300'" in e.value.message
    pid = int(e.value.output.split()[0])
    assert not alive(pid)


def test_run_streamed_delivers_lines_while_the_command_runs(tmp_path: Path) -> None:
    """The command waits for a file that the monitor creates when it sees the first line: only a
    live stream lets it finish on its own."""
    flag = tmp_path / "seen"

    class Answering(Lines):
        def log(self, message: str, name: str = "") -> None:
            super().log(message, name)
            if message == "first":
                flag.touch()

    script = f"echo first; for i in $(seq 200); do [ -e {flag} ] && {{ echo second; exit 4; }}; sleep 0.1; done; exit 9"
    monitor = Answering()
    result = run_streamed(["sh", "-c", script], monitor, name="step")
    assert (result.returncode, result.timed_out) == (4, False)
    assert monitor.lines == ["first", "second"]
    assert result.tail == "first\nsecond"


def test_run_streamed_timeout_kills_the_whole_group() -> None:
    monitor = Lines()
    result = run_streamed(["sh", "-c", "sleep 300 & echo $!; wait"], monitor, timeout=1)
    assert result.timed_out and result.returncode != 0
    child = int(monitor.lines[0])
    assert eventually(lambda: not alive(child)), "the command's child outlived the timeout"


def test_leaving_a_spawned_process_kills_it_and_its_children() -> None:
    with spawn(["sh", "-c", "sleep 300 & echo $!; wait"], stdout=subprocess.PIPE, text=True) as proc:
        child = int(proc.stdout.readline())  # type: ignore[union-attr]
        assert alive(proc.pid) and alive(child)
    assert proc.returncode is not None and not alive(proc.pid)
    assert eventually(lambda: not alive(child))


def test_spawned_process_check_and_stop() -> None:
    with spawn(["sh", "-c", "exit 5"]) as proc:
        with pytest.raises(ToolFailed, match="exit code 5: sh -c 'exit 5'"):
            proc.check()
    with spawn(["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.1; done"]) as proc:
        assert proc.wait(0.2) is None
        assert proc.stop(grace=20) == 0  # asked politely, it exits by itself


_OWNER = """
import subprocess, sys, time
from kiln.run import spawn
p = spawn(["sleep", "300"], die_with_parent=True)
print(p.pid, flush=True)
time.sleep(600)
"""


def test_a_child_started_with_die_with_parent_dies_with_kiln_on_kill_9() -> None:
    owner = subprocess.Popen([sys.executable, "-c", _OWNER], stdout=subprocess.PIPE, text=True)
    try:
        child = int(owner.stdout.readline())  # type: ignore[union-attr]
        assert alive(child)
        owner.kill()
        owner.wait(timeout=30)
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
    assert eventually(lambda: not alive(child)), "the child outlived kiln's kill -9"
