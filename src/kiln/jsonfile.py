"""Reading a user's JSON file (a template, Labs.json, a parameters file): every way it can fail
(missing, a directory, too big, not UTF-8, empty, bad syntax, NaN) becomes one Problem with the
file and, for syntax errors, the line and column, raised as ValidationFailed.

It lives apart from the template loader so that commands reading only small JSON files (such as
`kiln factory distribute` reading Labs.json) do not load the template compiler.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kiln.errors import Problem, ValidationFailed

MAX_FILE_BYTES = 16 * 1024 * 1024  # image templates are a few KiB; anything this big is a mistake


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def read_json(path: Path) -> Any:
    """Parse a JSON file, turning every way it can fail into one Problem (raised as ValidationFailed)."""
    file = str(path)

    def fail(message: str, hint: str = "") -> ValidationFailed:
        return ValidationFailed([Problem(message, "", file, hint)])

    try:
        if path.is_dir():
            raise fail("is a directory, not a template file", "pass the template's JSON file")
        if not path.exists():
            raise fail("no such file", "check the path")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise fail(f"the file is larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB; not an image template")
        raw = path.read_bytes()
    except OSError as e:
        raise fail(f"cannot read the file: {e.strerror or e}") from e
    try:
        text = raw.decode("utf-8-sig")  # templates saved on Windows often start with a BOM
    except UnicodeDecodeError as e:
        raise fail(f"not UTF-8 text (byte {e.start}); is this a binary file?", "an image template is a JSON file") from e
    if not text.strip():
        raise fail("the file is empty", "an image template is a JSON object")
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise ValidationFailed([Problem(f"not valid JSON: {e.msg}",
                                        f"line {e.lineno}, column {e.colno}", file,
                                        "check for a missing comma, quote or bracket near there")]) from e
    except RecursionError as e:
        raise fail("the JSON is nested too deeply") from e
    except ValueError as e:  # NaN/Infinity, integers with thousands of digits
        raise fail(f"not valid JSON: {e}") from e
