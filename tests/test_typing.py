"""src/ passes mypy in strict mode, with the project's configuration ([tool.mypy] in pyproject.toml).

The type checker runs as a test, so scripts/test (and CI) fail on a type error like on any other.
Modules still being typed are listed under `[[tool.mypy.overrides]]` with `ignore_errors`; each
entry must name a module that exists (mypy only notes a stale one, without failing).
"""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

import pytest

from envcheck import unavailable

REPO = Path(__file__).resolve().parent.parent
PYTHON = REPO / ".venv" / "bin" / "python"


def mypy(cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    if not PYTHON.exists():
        unavailable(f"{PYTHON} is missing: run scripts/setup")
    # A cache of its own: a stale one in the work tree could hide an error, and a test leaves no litter.
    proc = subprocess.run([str(PYTHON), "-m", "mypy", "--cache-dir", str(cache), *args],
                          cwd=REPO, text=True, capture_output=True, check=False)
    if "No module named mypy" in proc.stderr:
        unavailable("mypy is not installed in .venv: run scripts/setup (it is in the test extra)")
    return proc


@pytest.mark.timeout(900)  # a cold strict run takes ~1 min alone, several under a full suite
def test_src_passes_strict_mypy(tmp_path: Path) -> None:
    proc = mypy(tmp_path / "cache")
    assert proc.returncode == 0, f"mypy (strict) reports errors in src/:\n{proc.stdout}{proc.stderr}"
    assert "Success: no issues found" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.timeout(900)  # a cold strict run takes ~1 min alone, several under a full suite
def test_the_configuration_is_strict(tmp_path: Path) -> None:
    """An unannotated function, which default mode accepts, is an error under the project's settings."""
    sample = tmp_path / "sample.py"
    sample.write_text("def double(x):\n    return x * 2\n")
    proc = mypy(tmp_path / "cache", "--config-file", str(REPO / "pyproject.toml"), str(sample))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "[no-untyped-def]" in proc.stdout, proc.stdout + proc.stderr


def test_every_override_names_an_existing_module() -> None:
    overrides = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mypy"].get("overrides", [])
    stale = []
    for entry in overrides:
        modules = entry["module"] if isinstance(entry["module"], list) else [entry["module"]]
        for module in modules:
            path = REPO / "src" / module.removesuffix(".*").replace(".", "/")
            if not (path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()):
                stale.append(module)
    assert not stale, f"[[tool.mypy.overrides]] names modules that do not exist: {stale}"
