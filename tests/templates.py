"""A small Debian 12 image template for tests that need a real build but not a particular one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def debian12_template(tmp: Path, image_id: str, *, name: str = "template",
                      customize: list[dict[str, Any]] | None = None) -> Path:
    """Writes `tmp/<name>.json`: Debian 12, one Shell step (or `customize`), one ManagedImage target."""
    data = {
        "type": "Microsoft.VirtualMachineImages/imageTemplates", "apiVersion": "2022-07-01", "location": "westus2",
        "properties": {
            "source": {"type": "PlatformImage", "publisher": "Debian", "offer": "debian-12", "sku": "12-gen2",
                       "version": "latest"},
            "customize": customize if customize is not None else [
                {"type": "Shell", "name": "hello", "inline": ["echo hello > /etc/hello"]}],
            "distribute": [{"type": "ManagedImage", "imageId": image_id, "location": "westus2", "runOutputName": "out"}],
        },
    }
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(data))
    return path
