"""kiln.sandbox.limits: what `probe()` reports (for `kiln doctor`) is what a sandboxed run gets."""

from __future__ import annotations

import pytest

from kiln.sandbox import limits


def test_probe_matches_the_cgroups_a_run_gets() -> None:
    available = limits.probe()
    groups = limits.Cgroups(limits.Settings(memory_bytes=64 * 2**20, pids_max=50))
    made = list(groups.dirs.values())
    try:
        assert ("memory" in groups.dirs) == available.memory
        assert ("pids" in groups.dirs) == available.pids
        assert ("devices" in groups.dirs) == available.devices
        assert len(available.why_not) == (not available.memory) + (not available.pids) + (not available.devices)
        if available.devices:
            assert "c 1:3 rwm" in (groups.dirs["devices"] / "devices.list").read_text().splitlines()
            assert "a *:* rwm" not in (groups.dirs["devices"] / "devices.list").read_text()
        if available.memory:
            assert int((groups.dirs["memory"] / "memory.limit_in_bytes").read_text()) == 64 * 2**20
        if available.pids:
            assert (groups.dirs["pids"] / "pids.max").read_text().strip() == "50"
        assert groups.oom_kills() == 0 and groups.fork_refusals() == 0
    finally:
        groups.remove()
    assert [d for d in made if d.exists()] == []


@pytest.mark.parametrize(("value", "expected"), [("512", 512 * 2**20), ("0", 0)])
def test_memory_limit_from_the_environment(monkeypatch: pytest.MonkeyPatch, value: str, expected: int) -> None:
    monkeypatch.setenv("KILN_SANDBOX_MEMORY_MIB", value)
    monkeypatch.setenv("KILN_SANDBOX_PIDS_MAX", "77")
    assert limits.settings() == limits.Settings(memory_bytes=expected, pids_max=77)


def test_the_devices_cgroup_refuses_block_devices() -> None:
    """Without it, root inside the sandbox could open a disk node an image brought along (hosts
    whose root filesystem is mounted nodev refuse that anyway; this checks the cgroup itself)."""
    import subprocess
    from pathlib import Path

    if not limits.probe().devices:
        pytest.skip("no devices cgroup here (limits.probe() says why)")
    disks = [Path("/dev") / p.name for p in sorted(Path("/sys/class/block").iterdir()) if (Path("/dev") / p.name).exists()]
    if not disks:
        pytest.skip("no block device node in /dev")
    probe = ["dd", f"if={disks[0]}", "of=/dev/null", "count=0"]
    assert subprocess.run(probe, capture_output=True).returncode == 0  # control: the host itself may
    groups = limits.Cgroups(limits.Settings(memory_bytes=0, pids_max=0))
    try:
        procs = groups.dirs["devices"] / "cgroup.procs"
        done = subprocess.run(["sh", "-c", f'echo $$ > {procs} && exec "$@"', "sh", *probe], capture_output=True, text=True)
    finally:
        groups.remove()
    assert done.returncode != 0 and "Operation not permitted" in done.stderr, done.stderr
