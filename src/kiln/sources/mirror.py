"""What an apt mirror offers for a suite, read from its Release file.

Before any bootstrap, kiln fetches `dists/<suite>/Release` with a short timeout: an unreachable
or wrong mirror becomes a clear error in seconds instead of a hanging bootstrap, and the file
gives the exact version a `latest` resolves to. The exact version is derived from the Release
file alone, so it is deterministic: the point release and the date the archive was published,
e.g. Debian 12.15 published 2026-07-11 → `12.15.20260711` (Azure-style major.minor.patch).
"""

from __future__ import annotations

import email.utils
import hashlib
import re
from dataclasses import dataclass

import requests

from kiln.errors import InvalidInput

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class SuiteRelease:
    mirror: str
    suite: str
    codename: str
    version: str  # "12.15"; empty for suites without one (testing, unstable)
    date: str  # YYYYMMDD, UTC
    sha256: str  # of the Release file: changes whenever the archive does

    @property
    def exact_version(self) -> str:
        nums = [p for p in re.split(r"[^0-9]+", self.version) if p][:2] or ["0"]
        while len(nums) < 2:
            nums.append("0")
        return f"{int(nums[0])}.{int(nums[1])}.{self.date}"


def fetch_release(mirror: str, suite: str) -> SuiteRelease:
    """Read `<mirror>/dists/<suite>/Release`, or raise `InvalidInput` quickly if it can't be had."""
    url = f"{mirror.rstrip('/')}/dists/{suite}/Release"
    hint = "check [mirrors] in config.toml (or the host's apt sources) and that the mirror is reachable"
    try:
        resp = requests.get(url, timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S))
    except requests.RequestException as e:
        raise InvalidInput(f"apt mirror unreachable: {url}: {_reason(e)}", hint=hint) from e
    if resp.status_code != 200:
        raise InvalidInput(f"apt mirror has no suite {suite!r}: GET {url} returned HTTP {resp.status_code}", hint=hint)
    fields = parse_release(resp.text)
    if "codename" not in fields and "suite" not in fields:
        raise InvalidInput(f"{url} is not an apt Release file", hint=hint)
    return SuiteRelease(
        mirror=mirror.rstrip("/"),
        suite=suite,
        codename=fields.get("codename", suite),
        version=fields.get("version", ""),
        date=_yyyymmdd(fields.get("date", "")),
        sha256=hashlib.sha256(resp.content).hexdigest(),
    )


def parse_release(text: str) -> dict[str, str]:
    """The single-line fields of a Release file's first paragraph, keys lower-cased."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break
        if line[0].isspace() or ":" not in line:
            continue
        key, value = line.split(":", 1)
        fields[key.strip().lower()] = value.strip()
    return fields


def _yyyymmdd(date: str) -> str:
    try:
        return email.utils.parsedate_to_datetime(date).strftime("%Y%m%d")
    except (TypeError, ValueError):
        return "0"


def _reason(e: requests.RequestException) -> str:
    text = str(e)
    for marker in ("Failed to resolve", "Connection refused", "timed out", "Name or service not known"):
        if marker in text:
            return marker.lower()
    return type(e).__name__
