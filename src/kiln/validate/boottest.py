"""The boot test: boot a built disk in QEMU and let the guest say it is ready, then validate in it.

Every kiln image carries an inert hook (`kiln-guest-check.service`, installed by
`prepare_boot`), the way every Azure image carries waagent. For one boot, kiln attaches a small
read-only "check disk" (virtio, serial `kiln-check`) holding a per-boot nonce and the validation
scripts; the hook's unit is wanted by that disk's device, so without it nothing runs. When the boot
has finished, the guest prints to its serial console

    KILN-READY <nonce> state=<systemd state>
    KILN-BEGIN <nonce> 001
    …the script's output…
    KILN-END <nonce> 001 <exit code>
    KILN-DONE <nonce>

and powers off. A check disk rather than SMBIOS credentials or fw_cfg, because it works the same
on Debian 11 (systemd 247 imports no SMBIOS credentials), 12 and 13, needs no optional kernel
module, and carries scripts of any size. The boot runs on a throwaway overlay, so the nonce, the
scripts and everything the boot writes vanish with it: none of it reaches the published disk.

That is the `serial` check. An image with cloud-init and an OpenSSH server gets the `ssh-login`
check instead (login.py): a throwaway user provisioned through NoCloud logs in over SSH, and the
validations run in that session. `boot_test()` inspects the disk first (choose.py) and records
in its report which check ran.
"""

from __future__ import annotations

import io
import re
import secrets
import tarfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from kiln.errors import BuildFailed
from kiln.events import Monitor, NullMonitor
from kiln.sandbox.vm import DataDisk, VirtualMachine, detect_accel
from kiln.validate.choose import CHECKS, SERIAL, SSH_LOGIN, CheckChoice, choose_check

CHECK_DISK_SERIAL = "kiln-check"
OUTPUT_TAIL_CHARS = 4000
SERIAL_TAIL_LINES = 40
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # systemd's colours: noise in a log and a report
LineSink = Callable[[str], None]  # where the parser reports what the guest printed
POWEROFF_GRACE_S = 60.0  # after the last result, the guest shuts down by itself; then we stop waiting


@dataclass(frozen=True)
class GuestScript:
    """A shell script to run as root in the booted guest (a `#!` line picks its interpreter; else bash)."""

    name: str
    content: bytes


@dataclass(frozen=True)
class ScriptResult:
    name: str
    exit_code: int
    output_tail: str


@dataclass(frozen=True)
class BootReport:
    """What one boot test saw. `ok`: ready, and every script ran and exited 0."""

    ok: bool
    seconds: float  # the whole boot test
    marker_seen: bool
    results: tuple[ScriptResult, ...] = ()
    serial_tail: str = ""
    ready_seconds: float | None = None  # QEMU start → readiness marker
    system_state: str = ""  # systemd's state at readiness: running, or degraded (failed units)
    failed_units: tuple[str, ...] = ()
    login_prompt_seen: bool = False
    accel: str = ""
    message: str = ""  # why it failed, with the serial tail; "" when ok
    check: str = SERIAL  # which boot test ran: ssh-login | serial
    check_reason: str = ""  # what in the image chose it
    login_seconds: float | None = None  # ssh-login: QEMU start → the first SSH login that worked
    login_user: str = ""  # ssh-login: the throwaway admin user (only ever in the overlay)
    cloud_init_status: str = ""  # ssh-login: done | error | ...

    def raise_for_failure(self) -> None:
        if not self.ok:
            raise BuildFailed(self.message or "the boot test failed")


@dataclass
class _SerialParser:
    """Follows the guest's serial console and picks out this boot's markers."""

    nonce: str
    names: Sequence[str]
    ready: bool = False
    state: str = ""
    done: bool = False
    login_prompt: bool = False
    failed_units: list[str] = field(default_factory=list)
    results: list[ScriptResult] = field(default_factory=list)
    _partial: str = ""
    _current: str | None = None
    _output: list[str] = field(default_factory=list)
    _tail: list[str] = field(default_factory=list)

    def feed(self, text: str, on_line: LineSink | None = None) -> None:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for raw in lines:
            line = _ANSI.sub("", raw.rstrip("\r"))
            self._tail = [*self._tail[-(SERIAL_TAIL_LINES - 1):], line]
            self._line(line, on_line)

    def flush(self, on_line: LineSink | None = None) -> None:
        if self._partial:
            self.feed("\n", on_line)

    def tail(self) -> str:
        lines = self._tail + ([self._partial.rstrip("\r")] if self._partial else [])
        return "\n".join(lines[-SERIAL_TAIL_LINES:])

    def _line(self, line: str, on_line: LineSink | None) -> None:
        n = re.escape(self.nonce)
        # agetty's prompt ("<host> login: ") has no newline: what follows lands on the same line.
        if self._current is None and re.search(r"\S login: ", line + " "):
            self.login_prompt = True
        if m := re.search(rf"KILN-READY {n} state=(\S+)", line):
            self.ready, self.state = True, m.group(1)
            return
        if m := re.search(r"KILN-FAILED-UNIT\s+[●*]?\s*(\S+)", line):
            self.failed_units.append(m.group(1))
            return
        if m := re.search(rf"KILN-BEGIN {n} (\d+)", line):
            self._current, self._output = m.group(1), []
            return
        if m := re.search(rf"KILN-END {n} (\d+) (\d+)", line):
            idx, code = int(m.group(1)), int(m.group(2))
            out = self._output
            name = self.names[idx - 1] if 0 < idx <= len(self.names) else f"script {idx}"
            result = ScriptResult(name, code, "\n".join(out)[-OUTPUT_TAIL_CHARS:])
            self.results.append(result)
            self._current = None
            if on_line:
                on_line(f"validation {name!r} exited {code}")
            return
        if re.search(rf"KILN-DONE {n}\b", line):
            self.done = True
            return
        if self._current is not None:
            self._output.append(line)
            if on_line:
                on_line(f"  | {line}")


def boot_test_cpus() -> int:
    """vCPUs for a boot test: one under TCG, two with KVM.

    Under TCG a second vCPU makes the boot slower, not faster (measured here: 219 s vs 163 s to
    readiness on a busy 2-core host): the guest kernel finds the vCPUs' TSCs unsynchronized and
    falls back to the HPET clocksource, every read of which is an emulated MMIO access, and the
    two vCPU threads compete with each other (and with the host) for the same cores.
    """
    return 1 if detect_accel() == "tcg" else 2


def _check_disk(nonce: str, scripts: Sequence[GuestScript]) -> bytes:
    """The per-boot payload: a plain tar (the guest reads it straight off the block device)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        def add(name: str, data: bytes, mode: int) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, int(time.time())
            tar.addfile(info, io.BytesIO(data))

        add("nonce", nonce.encode() + b"\n", 0o600)
        for i, script in enumerate(scripts, 1):
            add(f"scripts/{i:03d}", script.content, 0o700)
    return buf.getvalue()


def boot_test(
    disk: Path,
    fmt: str,
    *,
    scripts: Sequence[GuestScript] = (),
    timeout_s: float,
    monitor: Monitor | None = None,
    serial_log: Path | None = None,
    scripts_timeout_s: float = 1800.0,
    memory_mib: int = 1536,
    work_dir: Path | None = None,
    persist: bool = False,
    firmware: str = "uefi",  # "bios": SeaBIOS, for hyperVGeneration V1
    check: str = "auto",
) -> BootReport:
    """Boot `disk` (fmt raw|vpc) until the guest reports readiness within `timeout_s`, run `scripts`
    (ssh-login: `timeout_s` to the first login, and as long again for cloud-init to finish).

    Returns a report; a guest that never becomes ready gives `ok=False` with a message carrying the
    serial tail (it does not raise). QEMU and its temp dir are gone when this returns or raises.
    `persist=True` boots the disk itself instead of an overlay (for steps whose changes must stay;
    always the serial check: a login would leave its user and cloud-init's state on the disk).
    `check`: auto (inspect the disk: ssh-login when it has cloud-init and sshd), ssh-login or serial.
    `firmware`: uefi, or bios (SeaBIOS).
    """
    monitor = monitor or NullMonitor()
    if check not in ("auto", *CHECKS):
        raise ValueError(f"unknown boot test check {check!r}")
    if persist:
        choice = CheckChoice(SERIAL, "the boot writes the disk itself (persist)")
    elif check == "auto":
        choice = choose_check(disk, fmt)
    else:
        choice = CheckChoice(check, "asked for")
    monitor.log(f"boot test: {choice.kind} check ({choice.reason})")
    if choice.kind == SSH_LOGIN:
        return _login_boot_test(disk, fmt, scripts=scripts, timeout_s=timeout_s, monitor=monitor,
                                serial_log=serial_log, scripts_timeout_s=scripts_timeout_s, memory_mib=memory_mib,
                                work_dir=work_dir, firmware=firmware, reason=choice.reason)
    return replace(_serial_boot_test(disk, fmt, scripts=scripts, timeout_s=timeout_s, monitor=monitor,
                                     serial_log=serial_log, scripts_timeout_s=scripts_timeout_s,
                                     memory_mib=memory_mib, work_dir=work_dir, persist=persist, firmware=firmware),
                   check=SERIAL, check_reason=choice.reason)


def _login_boot_test(
    disk: Path,
    fmt: str,
    *,
    scripts: Sequence[GuestScript],
    timeout_s: float,
    monitor: Monitor,
    serial_log: Path | None,
    scripts_timeout_s: float,
    memory_mib: int,
    work_dir: Path | None,
    firmware: str,
    reason: str,
) -> BootReport:
    from kiln.validate.login import login_boot

    parser = _SerialParser("-", [])  # no markers in this check: it follows the console for its tail
    started = time.monotonic()
    out = login_boot(disk, fmt, scripts=[(s.name, s.content) for s in scripts], timeout_s=timeout_s,
                     scripts_timeout_s=scripts_timeout_s, monitor=monitor, serial_log=serial_log,
                     memory_mib=memory_mib, cpus=boot_test_cpus(), work_dir=work_dir, firmware=firmware,
                     on_serial=parser.feed)
    parser.flush()
    seconds = time.monotonic() - started
    results = tuple(ScriptResult(name, code, text[-OUTPUT_TAIL_CHARS:]) for name, code, text in out.results)
    problem = out.problem
    if not problem and len(results) != len(scripts):
        problem = f"only {len(results)} of {len(scripts)} validation(s) reported a result"
    failed = [r for r in results if r.exit_code != 0]
    if problem:
        where = f" (serial console: {serial_log})" if serial_log else ""
        message = f"boot test failed: {problem}{where}\n--- serial console, last lines ---\n{parser.tail()}"
        monitor.log(message)
    elif failed:
        message = "; ".join(f"validation {r.name!r} exited {r.exit_code}: {r.output_tail.strip()[-300:]}" for r in failed)
    else:
        message = ""
    status = out.status
    return BootReport(
        ok=not message,
        seconds=seconds,
        marker_seen=out.ready_at is not None,
        results=results,
        serial_tail=parser.tail(),
        ready_seconds=out.ready_at,
        system_state=status.system_state if status else "",
        failed_units=status.failed_units if status else (),
        login_prompt_seen=parser.login_prompt,
        accel=out.accel,
        message=message,
        check=SSH_LOGIN,
        check_reason=reason,
        login_seconds=out.login_at,
        login_user=out.user,
        cloud_init_status=status.cloud_init if status else "",
    )


def _serial_boot_test(
    disk: Path,
    fmt: str,
    *,
    scripts: Sequence[GuestScript],
    timeout_s: float,
    monitor: Monitor,
    serial_log: Path | None,
    scripts_timeout_s: float,
    memory_mib: int,
    work_dir: Path | None,
    persist: bool,
    firmware: str,
) -> BootReport:
    nonce = secrets.token_hex(12)
    parser = _SerialParser(nonce, [s.name for s in scripts])
    names = ", ".join(s.name for s in scripts)
    started = time.monotonic()
    ready_at: float | None = None
    problem = ""
    exit_code: int | None = None
    with VirtualMachine(
        disk, fmt, serial_log=serial_log, memory_mib=memory_mib, overlay=not persist, work_dir=work_dir,
        data_disks=[DataDisk(CHECK_DISK_SERIAL, _check_disk(nonce, scripts))], monitor=monitor, firmware=firmware,
        cpus=boot_test_cpus(),
    ) as vm:
        accel = vm.accel

        def log(line: str) -> None:
            monitor.log(f"guest: {line}")

        while True:
            parser.feed(vm.read_serial(), log)
            now = time.monotonic()
            if parser.ready and ready_at is None:
                ready_at = now
                monitor.log(f"guest ready after {ready_at - started:.1f} s (system {parser.state})"
                            + (f"; running {len(scripts)} validation(s): {names}" if scripts else ""))
            if parser.done:
                break
            exit_code = vm.poll()
            if exit_code is not None:
                parser.feed(vm.read_serial(), log)
                parser.flush(log)
                problem = (f"QEMU exited with code {exit_code} before the guest "
                           + ("finished its validations" if parser.ready else "reported readiness"))
                if qemu_out := vm.qemu_output().strip():
                    problem += f"\nQEMU said: {qemu_out[-1500:]}"
                break
            if ready_at is None and now - started > timeout_s:
                problem = f"the guest did not report readiness within {timeout_s:.0f} s"
                break
            if ready_at is not None and now - ready_at > scripts_timeout_s:
                problem = f"the validations did not finish within {scripts_timeout_s:.0f} s"
                break
            time.sleep(0.25)
        if parser.done and exit_code is None and persist:
            # The boot wrote to the disk itself: let the guest power off cleanly (it is killed after
            # anyway). On a throwaway overlay there is nothing to flush: QEMU is stopped at once.
            vm.wait(POWEROFF_GRACE_S)
            parser.feed(vm.read_serial())
        parser.flush()
    seconds = time.monotonic() - started
    results = tuple(parser.results)
    if not problem and len(results) != len(scripts):
        problem = f"only {len(results)} of {len(scripts)} validation(s) reported a result"
    failed = [r for r in results if r.exit_code != 0]
    if problem:
        where = f" (serial console: {vm.serial_log})" if serial_log else ""
        message = f"boot test failed: {problem}{where}\n--- serial console, last lines ---\n{parser.tail()}"
    elif failed:
        message = "; ".join(f"validation {r.name!r} exited {r.exit_code}: {r.output_tail.strip()[-300:]}" for r in failed)
    else:
        message = ""
    report = BootReport(
        ok=not message,
        seconds=seconds,
        marker_seen=parser.ready,
        results=results,
        serial_tail=parser.tail(),
        ready_seconds=(ready_at - started) if ready_at is not None else None,
        system_state=parser.state,
        failed_units=tuple(parser.failed_units),
        login_prompt_seen=parser.login_prompt,
        accel=accel,
        message=message,
    )
    if problem:
        monitor.log(message)
    return report


def run_in_vm(
    disk: Path,
    fmt: str,
    script: GuestScript | str,
    *,
    timeout_s: float = 600.0,
    monitor: Monitor | None = None,
    serial_log: Path | None = None,
    persist: bool = False,
    work_dir: Path | None = None,
) -> ScriptResult:
    """Boot `disk`, run one script as root in the running system, power off; return its result.

    With `persist=False` (default) the changes vanish with the overlay; `persist=True` writes them
    to the disk itself (it then carries first-boot state: generalize it again before publishing).
    Raises BuildFailed if the guest never becomes ready.
    """
    if isinstance(script, str):
        script = GuestScript("run-in-vm", script.encode())
    report = boot_test(disk, fmt, scripts=[script], timeout_s=timeout_s, monitor=monitor,
                       serial_log=serial_log, persist=persist, work_dir=work_dir, check=SERIAL)
    if not report.results:
        raise BuildFailed(report.message or "the script did not run in the guest")
    return report.results[0]
