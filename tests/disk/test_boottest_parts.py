"""Boot-test pieces that need no VM: reading the guest's serial console, the check disk, KVM detection,
the QEMU command line and the namespace QEMU runs in."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import pytest

from envcheck import unavailable
from kiln.run import run
from kiln.sandbox.vm import SECCOMP, confined, detect_accel, interactive_command
from kiln.validate.boottest import GuestScript, _check_disk, _SerialParser

NONCE = "0123456789abcdef01234567"


def test_serial_parser_reads_markers_split_across_reads() -> None:
    console = (
        "[    1.0] Linux version 6.1\r\n"
        "Debian GNU/Linux 12 vm ttyS0\r\n\r\nvm login: \r\n"
        f"KILN-READY {NONCE} state=degraded\r\n"
        "KILN-FAILED-UNIT ● foo.service loaded failed failed Foo\r\n"
        f"KILN-BEGIN {NONCE} 001\r\nline one\r\n\r\nline three\r\n"
        f"KILN-END {NONCE} 001 0\r\n"
        f"KILN-BEGIN {NONCE} 002\r\n"
        # a stale marker from another boot (other nonce) is output, not a result
        "KILN-END ffffffffffffffffffffffff 002 0\r\n"
        f"KILN-END {NONCE} 002 42\r\n"
        f"KILN-DONE {NONCE}\r\n"
    )
    parser = _SerialParser(NONCE, ["first", "second"])
    lines: list[str] = []
    for i in range(0, len(console), 7):  # the log file is read in arbitrary chunks
        parser.feed(console[i:i + 7], lines.append)
    assert parser.ready and parser.state == "degraded" and parser.done and parser.login_prompt
    assert parser.failed_units == ["foo.service"]
    assert [(r.name, r.exit_code, r.output_tail) for r in parser.results] == [
        ("first", 0, "line one\n\nline three"),
        ("second", 42, "KILN-END ffffffffffffffffffffffff 002 0"),
    ]
    assert "validation 'second' exited 42" in lines


def test_serial_parser_sees_a_marker_glued_to_the_login_prompt() -> None:
    parser = _SerialParser(NONCE, [])
    parser.feed(f"\x1b[0;32mvm login: KILN-READY {NONCE} state=running\r\n")
    assert parser.ready and parser.login_prompt


def test_check_disk_is_a_tar_of_nonce_and_numbered_scripts() -> None:
    data = _check_disk(NONCE, [GuestScript("a b", b"echo 1\n"), GuestScript("c", b"exit 3\n")])
    assert len(data) % 512 == 0
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.getnames() == ["nonce", "scripts/001", "scripts/002"]
        assert tar.extractfile("nonce").read() == NONCE.encode() + b"\n"
        assert tar.extractfile("scripts/002").read() == b"exit 3\n"


@pytest.mark.skipif(not Path("/sys/module/kvm_pvm").is_dir(), reason="only meaningful where kvm_pvm is the KVM module")
def test_kvm_pvm_hosts_use_tcg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KILN_QEMU_ACCEL", raising=False)
    if Path("/sys/module/kvm_intel").is_dir() or Path("/sys/module/kvm_amd").is_dir():
        pytest.skip("a real KVM module is loaded too")
    detect_accel.cache_clear()
    assert detect_accel() == "tcg"


def test_the_command_to_boot_a_kept_disk_by_hand_changes_nothing(tmp_path: Path) -> None:
    disk = tmp_path / "my disk.vhd"
    argv = interactive_command(disk, "vpc")
    assert argv[0] == "qemu-system-x86_64"
    drives = [argv[i + 1] for i, a in enumerate(argv) if a == "-drive"]
    assert f"if=none,id=os,file={disk},format=vpc,cache=writeback,snapshot=on" in drives
    code, vars_ = (d for d in drives if d.startswith("if=pflash"))
    assert "readonly=on" in code and vars_.endswith("snapshot=on")  # the firmware's own store is not written
    assert argv[argv.index("-serial") + 1] == "mon:stdio"  # a person at a terminal; Ctrl-A x quits
    assert argv[argv.index("-sandbox") + 1] == SECCOMP


def test_the_namespace_shows_only_what_is_bound(tmp_path: Path) -> None:
    """What QEMU runs in: system files read-only, its own paths, nothing else of the host."""
    if shutil.which("bwrap") is None:
        unavailable("bwrap is not installed (run scripts/setup)")
    (tmp_path / "secret").write_text("not for the guest's QEMU\n")
    own = tmp_path / "vm-tmp"
    own.mkdir()
    disk = tmp_path / "disk.raw"
    disk.write_text("disk\n")
    script = (f"cat {disk}; echo written > {own}/out; cat {tmp_path}/secret; "
              f"echo x > {disk} || echo disk-is-read-only; touch /usr/kiln-test || echo usr-is-read-only; "
              f"ls /home | wc -l; grep ^CapEff /proc/self/status")
    out = run(confined(["sh", "-c", script], read_only=[disk], writable=[own], network=False),
              capture=True, check=False).stdout
    assert out.startswith("disk\n")
    assert (own / "out").read_text() == "written\n"
    assert "No such file or directory" in out and "not for the guest" not in out
    assert "disk-is-read-only" in out and disk.read_text() == "disk\n"
    assert "usr-is-read-only" in out
    assert "\n0\n" in out  # no /home
    assert "CapEff:\t0000000000000000" in out
