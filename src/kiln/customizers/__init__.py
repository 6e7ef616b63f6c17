"""Steps: a template's `customize` list, run in an isolated root, and its `inVMValidations`.

Each type (Shell, File, PowerShell, WindowsRestart, WindowsUpdate) is its own module that
registers its option schema and behaviour in `base.REGISTRY` (`registry` imports them all, cheaply:
the template schema is built from it). `runner.run_customizers` runs a template's steps in order
and `runner.check_supported` refuses, up front, steps the source's OS cannot run;
`guest.in_vm_scripts` turns validations into the scripts a booted guest runs. `fetch.Fetcher`
gets what they name (with URI rewrites and checksums).

The runner and the fetcher (sandbox, HTTP client) load only when asked for.
"""

from kiln.customizers import registry as _registry  # noqa: F401  (registers the types)
from kiln.customizers.base import REGISTRY, CustomizerFailed, StepInfo
from kiln.lazy import lazy_attributes

__all__ = ["REGISTRY", "CustomizerFailed", "Fetcher", "StepInfo", "check_supported", "in_vm_scripts",
           "run_customizers"]

__getattr__ = lazy_attributes(__name__, {
    "check_supported": "runner", "run_customizers": "runner", "in_vm_scripts": "guest", "Fetcher": "kiln.fetch",
})
