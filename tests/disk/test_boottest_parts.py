"""Boot-test pieces that need no VM: reading the guest's serial console, the check disk, KVM detection."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from kiln.sandbox.vm import detect_accel
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
