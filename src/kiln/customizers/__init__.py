"""Customizers: the steps of a template's `customize` list, run in an isolated root.

Each type (Shell, File, PowerShell, WindowsRestart, WindowsUpdate) is its own module that
registers its option schema and behaviour in `base.REGISTRY`; `runner.run_customizers` runs a
template's steps in order and `runner.check_supported` refuses, up front, steps the source's OS
cannot run. `fetch.Fetcher` gets what they name (with URI rewrites and checksums).
"""

from kiln.customizers.base import REGISTRY, CustomizerFailed, StepInfo
from kiln.customizers.runner import check_supported, run_customizers
from kiln.fetch import Fetcher

__all__ = ["REGISTRY", "CustomizerFailed", "Fetcher", "StepInfo", "check_supported", "run_customizers"]
