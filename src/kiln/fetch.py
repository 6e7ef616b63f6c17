"""Getting the files customizers name (scriptUri, sourceUri), checksum first.

A URI is http(s), file:// or a plain local path. Before anything is fetched, the state home's
URI rewrite rules (`[[uri_rewrites]]` in config.toml: prefix → local folder or other URL) are
applied, longest prefix first, so a template written for Azure (scripts on GitHub or in blob
storage) builds offline unchanged.

Downloads land under an `.unverified-` name beside their destination and are moved into place
only after their sha256 matches the template's `sha256Checksum` (when it gives one): a file that
failed its check is never where anything would run it. An unreachable URL fails within seconds.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.parse
from pathlib import Path

import requests

from kiln.config import Config
from kiln.errors import InvalidInput
from kiln.events import Monitor, NullMonitor

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 30.0
_CHUNK = 1 << 20


class Fetcher:
    """Fetches URIs for one run, applying the config's rewrites and verifying checksums."""

    def __init__(self, config: Config, monitor: Monitor | None = None) -> None:
        self.config = config
        self.monitor = monitor or NullMonitor()

    def rewrite(self, uri: str) -> str:
        """`uri` after its exact rule, or else the longest matching prefix rule; unchanged if none matches."""
        for rule in self.config.uri_rewrites:
            if rule.exact and uri == rule.prefix:
                return rule.target
        for rule in sorted((r for r in self.config.uri_rewrites if not r.exact), key=lambda r: len(r.prefix), reverse=True):
            if uri.startswith(rule.prefix):
                rest = uri[len(rule.prefix):]
                if "://" in rule.target:
                    return rule.target + rest
                return str(Path(rule.target) / urllib.parse.unquote(rest.split("?", 1)[0]).lstrip("/"))
        return uri

    def fetch_to(self, uri: str, sha256: str | None, dest: Path, *, what: str = "") -> Path:
        """Fetch `uri` to `dest`: via `.unverified-<name>`, renamed only once the checksum matches."""
        actual_uri = self.rewrite(uri)
        shown = uri if actual_uri == uri else f"{uri} (rewritten to {actual_uri})"
        dest.parent.mkdir(parents=True, exist_ok=True)
        unverified = dest.with_name(f".unverified-{dest.name}")
        try:
            digest = self._download(actual_uri, unverified, shown, what)
            if sha256 and digest.lower() != sha256.strip().lower():
                raise InvalidInput(
                    f"sha256 mismatch for {shown}: expected {sha256.strip().lower()}, got {digest}",
                    path=_checksum_path(what),
                    hint="the file changed or the checksum is wrong; nothing was run. Fix sha256Checksum "
                    "(sha256sum of the file) or the URI",
                )
            os.replace(unverified, dest)
        finally:
            unverified.unlink(missing_ok=True)
        self.monitor.log(f"fetched {shown} sha256={digest}" + (" (verified)" if sha256 else " (no checksum given)"))
        return dest

    def fetch_bytes(self, uri: str, sha256: str | None, *, what: str = "") -> bytes:
        with tempfile.TemporaryDirectory(prefix="kiln-fetch-") as tmp:
            return self.fetch_to(uri, sha256, Path(tmp) / "data", what=what).read_bytes()

    def fetch_text(self, uri: str, sha256: str | None, *, what: str = "") -> str:
        return self.fetch_bytes(uri, sha256, what=what).decode("utf-8", errors="replace")

    # ------------------------------------------------------------------ one download

    def _download(self, uri: str, out: Path, shown: str, what: str) -> str:
        scheme = urllib.parse.urlsplit(uri).scheme.lower()
        if scheme in ("http", "https"):
            return self._http(uri, out, shown, what)
        path = local_file(uri, what=what)
        if path is None:
            raise InvalidInput(f"unsupported URI scheme {scheme!r}: {uri}", path=what,
                               hint="use http(s)://, file:// or a local path, or add a [[uri_rewrites]] rule in config.toml")
        return self._local(path, out, shown, what)

    def _http(self, uri: str, out: Path, shown: str, what: str) -> str:
        hint = "check the URL and the network, or map it to a local copy with [[uri_rewrites]] in config.toml"
        h = hashlib.sha256()
        try:
            with requests.get(uri, stream=True, timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S)) as resp:
                if resp.status_code != 200:
                    raise InvalidInput(f"cannot download {shown}: HTTP {resp.status_code}", path=what, hint=hint)
                with out.open("wb") as fh:
                    for chunk in resp.iter_content(_CHUNK):
                        h.update(chunk)
                        fh.write(chunk)
        except requests.RequestException as e:
            raise InvalidInput(f"cannot download {shown}: {type(e).__name__}: {_short(e)}", path=what, hint=hint) from e
        return h.hexdigest()

    def _local(self, path: Path, out: Path, shown: str, what: str) -> str:
        if not path.is_file():
            raise InvalidInput(f"no such file: {shown}", path=what, hint="give an existing file, a file:// or an http(s) URL")
        h = hashlib.sha256()
        with path.open("rb") as src, out.open("wb") as dst:
            while chunk := src.read(_CHUNK):
                h.update(chunk)
                dst.write(chunk)
        shutil.copymode(path, out)
        return h.hexdigest()


def local_file(uri: str, *, what: str = "") -> Path | None:
    """The file a (rewritten) URI names on this host: a `file://` URI or a plain path; None for
    any other scheme. A `file://` URI naming another host is an InvalidInput."""
    parts = urllib.parse.urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise InvalidInput(f"file URI with a host is not supported: {uri}", path=what, hint="use file:///absolute/path")
        return Path(urllib.parse.unquote(parts.path))
    if scheme and len(scheme) > 1:
        return None
    return Path(uri)


def sha256_file(path: Path) -> str:
    """The file's sha256 as a template's `sha256Checksum` gives it (64 hex digits)."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _checksum_path(what: str) -> str:
    """`.properties.customize[1].scriptUri` → `.properties.customize[1].sha256Checksum`."""
    if what.lower().endswith(("scripturi", "sourceuri")):
        return what.rsplit(".", 1)[0] + ".sha256Checksum"
    return what


def _short(e: Exception) -> str:
    text = str(e)
    return text if len(text) < 200 else text[:200] + "…"
