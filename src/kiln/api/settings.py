"""How `kiln serve` runs, and what a template that arrives over the network may name on this host.

A template given to the CLI is the host's own user's: its `file://` and local paths are theirs
to name. A template that arrives over HTTP is not: every URI in it that is not http(s)
(`scriptUri`, `sourceUri`, a VHD target's `uri`, ...) must lie inside a folder the state home's
config.toml allows, and none is allowed by default:

    [api]
    local_roots = ["/srv/kiln/scripts"]    # file:// and local paths in API templates, only in here
    max_queued_runs_per_token = 10         # runs one token may have queued or running (kiln.api.quota)
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.config import Config
from kiln.errors import InvalidInput, Problem

DEFAULT_MAX_BODY = 4 * 1024 * 1024  # ARM's own limit on a request body
DEFAULT_RUNS_PER_TOKEN = 10
DEFAULT_PAGE_SIZE = 100


@dataclass(frozen=True)
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 8443
    workers: int = 1  # builds at a time
    max_body: int = DEFAULT_MAX_BODY
    insecure_http: bool = False
    local_roots: tuple[Path, ...] = ()
    max_runs_per_token: int = DEFAULT_RUNS_PER_TOKEN
    validate: bool = True  # False: `kiln serve --no-validate`, builds skip the boot test (as kiln build's)
    page_size: int = DEFAULT_PAGE_SIZE  # items in one page of a list; more get a nextLink


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _api_table(config: Config) -> dict[str, Any]:
    """`[api]` of config.toml (load_config has checked that the file parses)."""
    path = config.home / "config.toml"
    data = tomllib.loads(path.read_text()) if path.is_file() else {}
    table = data.get("api", {})
    return table if isinstance(table, dict) else {}


def max_runs_per_token(config: Config) -> int:
    """`[api] max_queued_runs_per_token`: a whole number, 0 or more (0: no API runs at all)."""
    n = _api_table(config).get("max_queued_runs_per_token", DEFAULT_RUNS_PER_TOKEN)
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise InvalidInput(f"[api] max_queued_runs_per_token must be a whole number, 0 or more, not {n!r}",
                           file=str(config.home / "config.toml"))
    return n


def local_roots(config: Config) -> tuple[Path, ...]:
    """`[api] local_roots` from config.toml."""
    path = config.home / "config.toml"
    roots = _api_table(config).get("local_roots", [])
    if not isinstance(roots, list) or not all(isinstance(r, str) and os.path.isabs(r) for r in roots):
        raise InvalidInput("[api] local_roots must be a list of absolute paths", file=str(path))
    return tuple(Path(os.path.realpath(r)) for r in roots)


def _uris(value: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, dict):
        for k, v in value.items():
            p = f"{path}.{k}"
            if isinstance(v, str) and k.lower().endswith("uri"):
                yield p, v
            else:
                yield from _uris(v, p)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _uris(v, f"{path}[{i}]")


def local_path_problems(body: Any, roots: tuple[Path, ...]) -> list[Problem]:
    """Every non-http(s) URI in `body` that points outside `roots` (realpath: no escaping by symlink)."""
    problems = []
    for where, uri in _uris(body, ""):
        parts = urllib.parse.urlsplit(uri)
        scheme = parts.scheme.lower()
        if scheme in ("http", "https"):
            continue
        if scheme == "file":
            local = urllib.parse.unquote(parts.path)
        elif scheme and len(scheme) > 1:
            continue  # an unknown scheme: the template's own checks refuse it
        else:
            local = uri
        hint = ("add a folder to [api] local_roots in the server's config.toml, or serve the file over http(s)"
                if not roots else f"allowed folders: {', '.join(map(str, roots))}")
        if not os.path.isabs(local):
            problems.append(Problem(f"a relative path ({uri!r}) means nothing in a template sent over the network",
                                    where, hint="give an http(s) URL or an absolute path inside an allowed folder"))
            continue
        real = Path(os.path.realpath(local))
        if not any(real == r or real.is_relative_to(r) for r in roots):
            problems.append(Problem(f"{uri!r} is a local path outside the folders this server allows", where, hint=hint))
    return problems
