"""What the script steps (Shell, PowerShell) share, in the isolated root and in the booted guest.

A script is the step's `inline` lines joined into one, or the bytes of its `scriptUri`, fetched
and checksum-verified by `Fetcher` before anything runs. A script whose first line is `#!` runs
with that interpreter, in the root (the kernel reads the line) and in the guest (the guest check
reads it: its scripts sit on a noexec /run). Which exit codes count as success is
`base.valid_exit_codes`; in the guest, `exit_code_filter` applies it before the guest reports, so
the host judges a validation by the code the guest prints (0: passed) whatever the step type.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .base import GuestContext

if TYPE_CHECKING:
    from kiln.fetch import Fetcher

SHEBANG = b"#!"


def inline_script(step: Any) -> str:
    """The inline lines as one script (AIB joins them so)."""
    return "\n".join(step.inline) + "\n"


def fetch_script(step: Any, ctx: GuestContext) -> bytes:
    """The step's script: its inline lines, or its scriptUri's bytes (checksum verified)."""
    if step.inline is not None:
        return inline_script(step).encode()
    assert step.script_uri is not None
    return ctx.fetcher.fetch_bytes(step.script_uri, step.sha256_checksum, what=f"{ctx.info.path}.scriptUri")


def stage_script(step: Any, fetcher: Fetcher, dest: Path, what: str) -> Path:
    """Write the step's script to `dest` on the host (fetched and verified when it is a scriptUri)."""
    if step.inline is not None:
        dest.write_text(inline_script(step))
        return dest
    assert step.script_uri is not None
    return fetcher.fetch_to(step.script_uri, step.sha256_checksum, dest, what=f"{what}.scriptUri")


def has_shebang(path_or_data: Path | bytes) -> bool:
    if isinstance(path_or_data, bytes):
        return path_or_data.startswith(SHEBANG)
    with path_or_data.open("rb") as fh:
        return fh.read(2) == SHEBANG


def embed(data: bytes, dest: str) -> str:
    """Shell lines that write `data` to the guest path in the shell variable `dest`."""
    encoded = base64.encodebytes(data).decode()
    return f'base64 -d >"${dest}" <<\'KILN-DATA\'\n{encoded}KILN-DATA\n'


def exit_code_filter(valid: tuple[int, ...]) -> str:
    """Shell lines that end the guest script with 0 when `$rc` is a valid exit code, else with `$rc`.

    A code outside `valid` stays what the guest reports (1 for a 0 that is not valid), and the
    output says which codes were valid, as the customize step's error does.
    """
    codes = ", ".join(str(int(c)) for c in valid)
    return (
        "case $rc in\n"
        f"    {'|'.join(str(int(c)) for c in valid)}) "
        f'[ "$rc" -eq 0 ] || echo "kiln: exit code $rc is valid ({codes})"; exit 0 ;;\n'
        "esac\n"
        f'echo "kiln: exit code $rc is not valid (valid exit codes: {codes})"\n'
        '[ "$rc" -eq 0 ] && exit 1\n'
        'exit "$rc"\n'
    )
