"""JSON paths as users see them: `.resources[0].properties.customize[2].name`.

A path is a tuple of keys and indexes into the file as written. Every problem kiln reports about a
template carries one, so an editor (or a person) can jump straight to the value.
"""

from __future__ import annotations

import re

JsonPath = tuple[str | int, ...]

_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # as jq writes them; others are quoted


def render(path: JsonPath) -> str:
    out = []
    for part in path:
        if isinstance(part, int):
            out.append(f"[{part}]")
        elif _PLAIN.match(part):
            out.append(f".{part}")
        else:
            escaped = part.replace("\\", "\\\\").replace('"', '\\"')
            out.append(f'["{escaped}"]')
    return "".join(out)
