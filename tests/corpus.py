"""Where the public conformance corpus is, for the suites that use it.

kiln's own test data lives in tests/; the conformance corpus (Microsoft's Image Builder templates,
REST examples and DevTest Labs samples) is kept outside the repository: `KILN_CONFORMANCE_DIR`, or
`../shared/conformance` beside the repository. Tests that use it call `conformance()` when they
run (never at import or collection, so a clone without the corpus still collects): without it they
skip saying where it goes, and under CI=true a missing corpus is a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

from envcheck import unavailable

REPO = Path(__file__).resolve().parent.parent
ENV = "KILN_CONFORMANCE_DIR"
BESIDE_REPO = REPO.parent / "shared" / "conformance"


def conformance_dir() -> Path:
    """Where the corpus is looked for (it may not be there: see `found()`)."""
    env = os.environ.get(ENV, "").strip()
    return Path(env).expanduser().absolute() if env else BESIDE_REPO


def found() -> bool:
    return (conformance_dir() / "aib").is_dir()


def conformance() -> Path:
    """The corpus folder, or skip the test (fail under CI=true) saying where the corpus goes."""
    if not found():
        where = f"{ENV}={conformance_dir()} has no aib/ folder" if os.environ.get(ENV, "").strip() \
            else f"the conformance corpus is not at {BESIDE_REPO}"
        unavailable(f"{where}: put the corpus (aib/, dtl/) at {BESIDE_REPO}, or set {ENV} to its folder")
    return conformance_dir()
