"""`kiln factory distribute` loads only what distribution needs, and reads only what it acts on.

Start-up is most of a small distribution's time, so these tests run the real command in a fresh
interpreter and look at which modules it imported: not the template compiler, JSON Schema, rich or
the build pipeline. They also pin down what distribution still checks in the configuration.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .conftest import PATHS, REPO, config_dir, lab_entry, lab_state, save_all, seed_staging

# Runs the CLI as `python -m kiln` does and, however it exits, writes the names of the modules it imported.
WRAPPER = """
import atexit, json, sys
atexit.register(lambda: open(sys.argv[1], "w").write(json.dumps(sorted(sys.modules))))
from kiln.cli import main
main(sys.argv[2:])
"""

HEAVY = ("kiln.template.load", "kiln.template.schema", "jsonschema", "rich", "kiln.pipeline.build",
         "kiln.factory.build", "kiln.factory.dtl")


def run_kiln(home: Path, tmp: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    modules = tmp / "modules.json"
    env = {**os.environ, "KILN_HOME": str(home), "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, "-c", WRAPPER, str(modules), *args], env=env, text=True,
                          capture_output=True, stdin=subprocess.DEVNULL, timeout=600)
    return proc, set(json.loads(modules.read_text()))


def loaded(modules: set[str], prefix: str) -> bool:
    return any(m == prefix or m.startswith(prefix + ".") for m in modules)


def test_help_loads_neither_the_store_nor_the_template_compiler(kiln_home: Path, tmp_path: Path) -> None:
    proc, modules = run_kiln(kiln_home, tmp_path, "factory", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "distribute" in proc.stdout
    for name in ("kiln.store", "kiln.factory.config", *HEAVY):
        assert not loaded(modules, name), name


def test_distribute_loads_only_what_distribution_needs(factory_home: Path, disks: list[Path], tmp_path: Path) -> None:
    for disk, path in zip(disks, PATHS, strict=False):
        seed_staging(factory_home, disk, path)
    save_all(factory_home)
    cfg = config_dir(tmp_path, [lab_entry("LabA", "Debian"), lab_entry("LabB", "Web")])
    proc, modules = run_kiln(factory_home, tmp_path, "factory", "distribute", str(cfg), "--create-labs-in", "eastus")
    assert proc.returncode == 0, proc.stderr
    assert "3 done, 0 skipped, 0 failed" in proc.stdout
    assert {(lab, path) for lab, _, path, *_ in lab_state(factory_home) if lab != "ImageFactory"} == {
        ("LabA", "Debian/base.json"), ("LabA", "Debian/tools.json"), ("LabB", "Web/site.json")}
    assert loaded(modules, "kiln.store.labs") and loaded(modules, "kiln.factory.distribute")
    for name in HEAVY:
        assert not loaded(modules, name), name


def test_distribute_checks_the_configuration_it_acts_on(factory_home: Path, disks: list[Path], tmp_path: Path) -> None:
    """Labs.json and the golden files' JSON still stop a distribution; a template's content does not
    (the images are built already: `kiln factory validate`/`build`/`retire` check templates in full)."""
    seed_staging(factory_home, disks[0], "Debian/base.json")
    save_all(factory_home)
    cfg = config_dir(tmp_path, [lab_entry("LabA", "Debian/base.json")])
    golden = cfg / "GoldenImages" / "Web" / "site.json"
    before = lab_state(factory_home)

    golden.write_text("[1, 2]")  # JSON, but not a golden image
    proc, _ = run_kiln(factory_home, tmp_path, "factory", "distribute", str(cfg), "--create-labs-in", "eastus")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "holds one JSON object" in proc.stderr and str(golden) in proc.stderr
    assert lab_state(factory_home) == before

    golden.write_text(json.dumps({"type": "Microsoft.VirtualMachineImages/imageTemplates", "properties": {}}))
    validate = run_kiln(factory_home, tmp_path, "factory", "validate", str(cfg))[0]
    assert validate.returncode == 2  # not a valid template: building it would be refused ...
    proc, _ = run_kiln(factory_home, tmp_path, "factory", "distribute", str(cfg), "--create-labs-in", "eastus")
    assert proc.returncode == 0, proc.stderr  # ... but base.json's built image is distributed
    assert "1 done" in proc.stdout
    assert {(lab, path) for lab, _, path, *_ in lab_state(factory_home)} == {
        ("ImageFactory", "Debian/base.json"), ("LabA", "Debian/base.json")}
