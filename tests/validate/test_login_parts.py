"""Pieces of the SSH-login boot test that need no VM: reading cloud-init's and systemd's report,
and the runner that executes a validation in the guest (run here, on the host, as the guest's
root would run it under sudo)."""

from __future__ import annotations

import base64
import json
import os
import subprocess

import pytest

from kiln.validate.login import _runner, parse_status

NONCE = "0123456789abcdef01234567"

# What Debian 12's cloud-init 22.4 printed in a real boot whose locale module failed.
LOCALE_ERROR = {"v1": {
    "datasource": "DataSourceNoCloud [seed=/dev/vdb][dsmode=net]",
    "init": {"errors": [], "finished": 85.1, "start": 70.2},
    "modules-config": {"errors": [
        "('locale', ProcessExecutionError(\"Unexpected error while running command.\\nCommand: ['update-locale', "
        "'--locale-file=/etc/default/locale', 'LANG=en_US.UTF-8']\\nExit code: 255\"))"],
        "finished": 110.8, "start": 103.4},
    "modules-final": {"errors": [], "recoverable_errors": {"WARNING": ["a warning"], "ERROR": ["an error"]}},
    "stage": None,
}}


def session(status: str, rc: int, status_json: object, state: str, failed: str = "") -> str:
    """The status session's output, as STATUS_COMMAND prints it."""
    return (f"......\nstatus: {status}\nboot_status_code: enabled-by-generator\ndetail:\nDataSourceNoCloud\n\n"
            f"KILN-CLOUD-INIT-RC {rc}\nKILN-RESULT-JSON\n{json.dumps(status_json)}\n\nKILN-STATE {state}\n{failed}")


def test_status_error_carries_each_stages_errors() -> None:
    s = parse_status(session("error", 1, LOCALE_ERROR, "degraded",
                             "KILN-FAILED-UNIT cloud-config.service loaded failed failed Apply the settings\n"))
    assert s.cloud_init == "error"
    assert s.system_state == "degraded" and s.failed_units == ("cloud-config.service",)
    assert s.errors[0].startswith("modules-config: ('locale', ProcessExecutionError(")
    assert "update-locale" in s.errors[0]
    assert s.errors[1:] == ("modules-final: ERROR: an error",)  # warnings are not errors
    assert s.detail.startswith("status: error")


def test_status_done_without_status_json() -> None:
    s = parse_status(session("done", 0, "", "running"))
    assert (s.cloud_init, s.errors, s.system_state, s.failed_units) == ("done", (), "running", ())


def finished(status_json: object, state: str) -> str:
    """The status session's output when result.json appeared (the usual way: no cloud-init run)."""
    return (f"KILN-CLOUD-INIT-FINISHED\n\nKILN-CLOUD-INIT-RC 0\nKILN-RESULT-JSON\n{json.dumps(status_json)}\n\n"
            f"KILN-STATE {state}\n")


def test_finished_stages_without_errors_are_done_and_with_errors_are_error() -> None:
    clean = {"v1": {stage: {"errors": []} for stage in ("init-local", "init", "modules-config", "modules-final")}}
    s = parse_status(finished(clean, "running"))
    assert (s.cloud_init, s.errors, s.system_state) == ("done", (), "running")
    s = parse_status(finished(LOCALE_ERROR, "degraded"))
    assert s.cloud_init == "error" and "update-locale" in s.detail
    assert s.errors[1:] == ("modules-final: ERROR: an error",)


def test_a_session_that_printed_nothing() -> None:
    s = parse_status("")
    assert (s.cloud_init, s.system_state) == ("", "")


def run_guest(script: bytes) -> str:
    if os.geteuid() != 0:
        pytest.skip("the runner works in /run and /root, as root in the guest")
    proc = subprocess.run(["sh", "-c", _runner(), "kiln-run", NONCE], input=base64.b64encode(script) + b"\n",
                          capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.decode()


def test_runner_reports_output_and_exit_code_after_a_marker() -> None:
    out = run_guest(b"echo to-stdout\necho to-stderr >&2\nprintf no-newline\nexit 255\n")
    assert out == f"to-stdout\nto-stderr\nno-newline\nKILN-END {NONCE} 255\n"


def work_dirs() -> set[str]:
    return {p for p in os.listdir("/run") if p.startswith("kiln-check.")}


def test_runner_uses_the_shebang_else_bash_with_no_stdin_in_root_home() -> None:
    before = work_dirs()  # an earlier run killed on this host may have left its own: not this test's
    assert run_guest(b"#!/bin/sh -e\nfalse\necho not reached\n") == f"KILN-END {NONCE} 1\n"
    out = run_guest(b'echo "$BASH_VERSION" | cut -c1; pwd; cat; echo read-nothing\n')
    assert out == f"5\n/root\nread-nothing\nKILN-END {NONCE} 0\n"
    assert work_dirs() <= before  # the runner removed its work dir
