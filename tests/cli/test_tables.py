"""Tables never cut an id: what a `list` prints in an 80-column terminal can be fed to `show`.

The state home holds one of everything (a managed image, a gallery with a definition and a
version, a lab with a custom image, a run), made through the real store; every list command then
runs as the real `kiln` CLI with COLUMNS=80, and each id it printed is handed to the matching
`show`, which must find it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kiln.cli.common import render_table
from kiln.config import load_config
from kiln.distribute.labs import publish_lab_image
from kiln.store import Store
from store_helpers import REPO

SUB = "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/kiln-images-westeurope/providers"
IMG = f"{SUB}/Microsoft.Compute/images/debian-12-web-server-golden"
GAL = f"{SUB}/Microsoft.Compute/galleries/corporate_gallery"
DEF = f"{GAL}/images/debian-12-web"
LAB = f"{SUB}/Microsoft.DevTestLab/labs/TeamLab"
TPL = f"{SUB}/Microsoft.VirtualMachineImages/imageTemplates/debian-web"
RESOURCE_ID = re.compile(r"/subscriptions/\S+")
RUN_ID = re.compile(r"\b[0-9a-f]{32}\b")


def kiln(home: Path, *args: str, columns: int = 80) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KILN_HOME": str(home), "PYTHONPATH": str(REPO / "src"), "COLUMNS": str(columns)}
    return subprocess.run([sys.executable, "-m", "kiln", "--progress", "quiet", *args], env=env, text=True,
                          capture_output=True, timeout=300, stdin=subprocess.DEVNULL)


@pytest.fixture
def home(kiln_home: Path, raw_disk: Path) -> Path:
    with Store.open(load_config(kiln_home)) as store:
        image = store.images.import_disk(raw_disk, IMG, "westeurope")
    for args in (("gallery", "create", GAL),
                 ("gallery", "image-definition", "create", DEF, "--publisher", "kiln", "--offer", "debian", "--sku", "12"),
                 ("gallery", "image-version", "create", f"{DEF}/versions/1.0.0", "--image", IMG),
                 ("lab", "create", LAB, "--location", "westeurope")):
        assert kiln(kiln_home, *args).returncode == 0, args
    with Store.open(load_config(kiln_home)) as store:
        publish_lab_image(store, LAB, "Debian_web-Dec-1-2026", store.blobs.get(image.digest),
                          image_path="Debian/web.json", boot_tested=True)
        store.runs.register_template(TPL, {})
        for _ in range(2):
            run = store.runs.create(TPL, log_path=str(kiln_home / "runs" / "a-rather-long-log-file-name.log"))
            store.runs.finish(run, "Succeeded")
    return kiln_home


LISTS = [
    # (list command, show command, pattern of the ids it prints)
    (("runs", "list"), ("runs", "show"), RUN_ID),
    (("image", "list"), ("image", "show"), RESOURCE_ID),
    (("gallery", "list"), ("gallery", "show"), RESOURCE_ID),
    (("gallery", "image-definition", "list"), ("gallery", "image-definition", "show"), RESOURCE_ID),
    (("gallery", "image-version", "list"), ("gallery", "image-version", "show"), RESOURCE_ID),
    (("lab", "list"), ("lab", "show"), RESOURCE_ID),
    (("lab", "image", "list", LAB), ("lab", "image", "show"), RESOURCE_ID),
]


def expected_ids(home: Path, command: tuple[str, ...]) -> set[str]:
    data = json.loads(kiln(home, *command, "--json").stdout)
    return {item["runId"] if "runId" in item else item["id"] for item in data}


@pytest.mark.parametrize(("list_cmd", "show_cmd", "pattern"), LISTS, ids=[" ".join(c[0][:3]) for c in LISTS])
def test_ids_printed_at_80_columns_can_be_shown(home: Path, list_cmd, show_cmd, pattern) -> None:
    proc = kiln(home, *list_cmd)
    assert proc.returncode == 0, proc.stderr
    printed = set(pattern.findall(proc.stdout))
    want = expected_ids(home, list_cmd)
    assert printed == want, proc.stdout  # every id, whole (a cut one would not match the catalog's)
    assert "…" not in proc.stdout and "..." not in proc.stdout
    for line in proc.stdout.splitlines():
        # Only a line holding an id too long for the terminal goes past it; kiln never breaks one.
        assert len(line) <= 80 or any(i in line for i in want), line
    for rid in printed:
        shown = kiln(home, *show_cmd, rid)
        assert shown.returncode == 0, (rid, shown.stderr)
        assert rid.lower() in shown.stdout.lower()


def test_runs_list_keeps_a_table_and_leaves_out_what_does_not_fit(home: Path) -> None:
    """A run id fits in 80 columns: the table stays a table (the widest columns are left out), ids whole."""
    proc = kiln(home, "runs", "list")
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:2] == ["run", "template"]
    assert all(len(line) <= 80 for line in lines)
    for run_id in expected_ids(home, ("runs", "list")):
        assert sum(line.startswith(run_id + " ") for line in lines) == 1


def test_a_wide_terminal_gets_one_line_per_row(home: Path) -> None:
    proc = kiln(home, "image", "list", columns=400)
    lines = proc.stdout.splitlines()
    assert len(lines) == 2 and lines[1].startswith(IMG + " ") and "westeurope" in lines[1]


def test_render_table_layouts() -> None:
    long_id = "/subscriptions/x/resourceGroups/rg/providers/Microsoft.Compute/images/" + "n" * 40
    rows = [(long_id, "westeurope", "a description with several words in it")]
    wide = render_table(("ID", "LOCATION", "DESCRIPTION"), rows, width=None).splitlines()
    assert len(wide) == 2 and wide[1].startswith(long_id)
    # Room for the id and a little more: the other columns wrap, the id does not.
    wrapped = render_table(("ID", "LOCATION", "DESCRIPTION"), rows, width=len(long_id) + 30).splitlines()
    assert wrapped[1].startswith(long_id + "  ") and len(wrapped) > 2
    assert all(len(line) <= len(long_id) + 30 for line in wrapped)
    assert " ".join(" ".join(line[len(long_id):].split()) for line in wrapped[1:]).split() == \
        "westeurope a description with several words in it".split()
    # Less room: the last column is left out (and named) rather than broken mid-word.
    dropped = render_table(("ID", "LOCATION", "DESCRIPTION"), rows, width=len(long_id) + 14).splitlines()
    assert dropped[0].split() == ["ID", "LOCATION"] and dropped[1].split() == [long_id, "westeurope"]
    assert dropped[-1].startswith("(DESCRIPTION: not shown")
    # No room: one block of FIELD value lines per row, the id on one line.
    stacked = render_table(("ID", "LOCATION", "DESCRIPTION"), rows * 2, width=40)
    blocks = stacked.split("\n\n")
    assert len(blocks) == 2 and blocks[0].splitlines()[0] == f"ID           {long_id}"
    assert "LOCATION     westeurope" in blocks[1]
