"""Names the image factory gives things, after the DevTest Labs factory's own convention.

A custom image is named after its golden image's folder and file and the day it was built:
`Linux/debian web.json` built on 21 Nov 2025 becomes `Linux_debian-web-Nov-21-2025` (a file
directly in GoldenImages keeps just its name). Dots become `_`, spaces `-`. A second build of the
same image on the same day gets `-2`, then `-3`, so reruns never collide.
"""

from __future__ import annotations

import datetime

from kiln.factory.config import normalize_path

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def base_name(image_path: str) -> str:
    parts = normalize_path(image_path).split("/")
    stem = parts[-1] if len(parts) == 1 else f"{parts[-2]}_{parts[-1]}"
    if stem.lower().endswith(".json"):
        stem = stem[:-5]
    cleaned = stem.replace(".", "_").replace(" ", "-")
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in cleaned)[:60] or "image"


def dated_name(image_path: str, when: float) -> str:
    # Month names are spelled out here, not by strftime, so the locale cannot change them.
    day = datetime.datetime.fromtimestamp(when).date()
    return f"{base_name(image_path)}-{MONTHS[day.month - 1]}-{day.day}-{day.year}"


def unique_name(name: str, taken: set[str]) -> str:
    """`name`, or `name-2`, `name-3`... whichever is free (`taken` holds lower-cased names)."""
    if name.lower() not in taken:
        return name
    n = 2
    while f"{name}-{n}".lower() in taken:
        n += 1
    return f"{name}-{n}"
