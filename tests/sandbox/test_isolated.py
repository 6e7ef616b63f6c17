"""IsolatedRoot on a real Debian 12 root: what a command inside sees, and what the host never does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import host_mounts_under, processes_in, wait_until

from kiln.run import CommandFailed
from kiln.sandbox.isolated import POLICY_RC_D, IsolatedRoot, SandboxTimeout
from monitors import Lines

pytestmark = pytest.mark.integration


def test_inside_view_and_nothing_left_on_host(fresh_root: Path) -> None:
    mon = Lines()
    host_hostname = os.uname().nodename
    with IsolatedRoot(fresh_root, mon) as sandbox:
        done = sandbox.run(["sh", "-c", textwrap.dedent("""\
            echo "pid=$$"
            echo "host=$(hostname)"
            echo "procs=$(ls /proc | grep -c '^[0-9]')"
            ls /dev | tr '\\n' ' '; echo
            test -c /dev/null && test -c /dev/urandom && test -d /dev/pts && echo devs-ok
            grep -q nameserver /etc/resolv.conf && echo resolv-ok
            /usr/sbin/policy-rc.d x start; echo "policy=$?"
            hostname changed-inside
            touch /dev/probe /run/probe
            (sleep 600 &)
            echo "os=$(. /etc/os-release; echo $VERSION_ID)"
        """)])
        assert (fresh_root / POLICY_RC_D).is_file()  # in place while the root is open
    out = done.tail.splitlines()
    assert done.ok
    assert "pid=1" in out  # its own pid namespace
    assert "host=debian" in out  # the image's hostname, in its own uts namespace
    assert "devs-ok" in out and "resolv-ok" in out
    assert "policy=101" in out  # services would not start
    assert "os=12" in out
    assert any(line.startswith("procs=") and int(line.split("=")[1]) < 10 for line in out)  # only its own processes
    assert "pid=1" in mon.lines  # output was streamed to the monitor
    assert os.uname().nodename == host_hostname
    assert not (fresh_root / POLICY_RC_D).exists()  # removed afterwards
    assert processes_in(fresh_root) == []  # the backgrounded sleep died with the namespace
    assert host_mounts_under(fresh_root) == []  # proc, sys, dev, run: never on the host
    assert not (fresh_root / "dev/probe").exists()  # /dev and /run were tmpfs inside only
    assert not (fresh_root / "run/probe").exists()


def test_exit_code_tail_and_check(fresh_root: Path) -> None:
    with IsolatedRoot(fresh_root) as sandbox:
        done = sandbox.run(["sh", "-c", "echo one; echo two >&2; exit 7"])
        assert (done.returncode, done.tail.splitlines()) == (7, ["one", "two"])
        with pytest.raises(CommandFailed) as e:
            sandbox.run(["sh", "-c", "echo oops; exit 3"], check=True)
    assert "exit code 3" in str(e.value) and "oops" in str(e.value)


def test_image_policy_rc_d_is_put_back(fresh_root: Path) -> None:
    own = fresh_root / POLICY_RC_D
    own.write_text("#!/bin/sh\nexit 0\n")
    own.chmod(0o755)
    with IsolatedRoot(fresh_root) as sandbox:
        assert "exit 101" in own.read_text()
        assert sandbox.run(["/usr/sbin/policy-rc.d"]).returncode == 101
    assert own.read_text() == "#!/bin/sh\nexit 0\n"


def test_timeout_kills_the_namespace(fresh_root: Path) -> None:
    with IsolatedRoot(fresh_root) as sandbox, pytest.raises(SandboxTimeout) as e:
        sandbox.run(["sh", "-c", "echo started; sleep 600 & sleep 600"], timeout=3)
    assert "timed out" in e.value.message and "started" in e.value.message
    assert wait_until(lambda: processes_in(fresh_root) == [])
    assert host_mounts_under(fresh_root) == []


_CHILD = """
import sys
from pathlib import Path
from kiln.sandbox.isolated import IsolatedRoot
root = Path(sys.argv[1])
with IsolatedRoot(root) as sandbox:
    sandbox.run(["sh", "-c", "sleep 600 & touch /tmp/started; sleep 600"])
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_killing_kiln_leaves_no_process_or_mount(fresh_root: Path, sig: signal.Signals) -> None:
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(fresh_root)])
    try:
        assert wait_until(lambda: (fresh_root / "tmp/started").exists(), 60), "the command never started"
        assert len(processes_in(fresh_root)) >= 2
        child.send_signal(sig)
        child.wait(timeout=300)
        assert wait_until(lambda: processes_in(fresh_root) == []), f"left behind: {processes_in(fresh_root)}"
        assert host_mounts_under(fresh_root) == []
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
