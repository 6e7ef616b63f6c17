"""AIB's run semantics beyond success: errorHandling `abort` keeps the work for inspection;
`continueDistributeOnFailure` publishes an image whose validation failed (the run is still Failed,
and the image is recorded as not boot-tested); `sourceValidationOnly` validates the source as it is."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import RG, SUB, Kiln
from .test_failures import assert_host_clean, last_run, store_state, template

pytestmark = pytest.mark.integration


def test_abort_keeps_the_work_directory(kiln: Kiln, tmp_path: Path) -> None:
    before = store_state(kiln)
    path = template(tmp_path, [
        {"type": "Shell", "name": "leave-a-clue", "inline": ["echo clue > /etc/kiln-clue"]},
        {"type": "Shell", "name": "breaks", "inline": ["exit 4"]},
    ], errorHandling={"onCustomizerError": "abort"})
    proc = kiln("build", str(path), check=False)
    assert proc.returncode == 1
    match = re.search(r"work directory is kept at (\S+)", proc.stderr)
    assert match, proc.stderr
    work = Path(match.group(1))
    try:
        assert (work / "root" / "etc" / "kiln-clue").read_text() == "clue\n"  # the state the step left
        assert (work / ".kiln-keep").is_file()
        # a ready-to-use command to enter the root: run it (as root already, so without sudo)
        enter = re.search(r"enter the root[^:]*: sudo (.+ /bin/bash)$", proc.stderr, re.M)
        assert enter, proc.stderr
        argv = shlex.split(enter.group(1))[:-1] + ["/bin/sh", "-c", "cat /etc/kiln-clue"]
        assert subprocess.run(argv, capture_output=True, text=True, timeout=60).stdout == "clue\n"
        assert last_run(kiln)["lastRunStatus"]["runState"] == "Failed"
        assert store_state(kiln) == before
    finally:
        shutil.rmtree(work)
    assert_host_clean(kiln)


def test_continue_distribute_on_failure_with_source_validation_only(kiln: Kiln, tmp_path: Path) -> None:
    """One boot: the platform image is validated as it is (no customizers, not generalized by kiln),
    one validation fails, and the image is distributed anyway but marked as not boot-tested."""
    image_id = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/images/published-despite-failure"
    path = template(tmp_path, [], validate={
        "sourceValidationOnly": True,
        "continueDistributeOnFailure": True,
        "inVMValidations": [
            {"type": "Shell", "name": "is-debian-12", "inline": ["grep -q 'VERSION_ID=\"12\"' /etc/os-release"]},
            {"type": "Shell", "name": "fails-on-purpose", "inline": ["echo failing-on-purpose", "exit 3"]},
        ],
    })
    data = json.loads(path.read_text())
    data["properties"]["distribute"][0]["imageId"] = image_id
    path.write_text(json.dumps(data))
    proc = kiln("build", str(path), check=False)
    assert proc.returncode == 1, proc.stderr
    status = last_run(kiln)["lastRunStatus"]
    assert status["runState"] == "Failed"
    assert "fails-on-purpose" in status["message"] and "exited 3" in status["message"]
    assert "is-debian-12" not in status["message"]  # that one passed
    image = kiln.json("image", "show", image_id)
    assert image["kiln"]["bootTested"] is False
    assert_host_clean(kiln)
