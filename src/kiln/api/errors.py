"""Errors as Azure Resource Manager writes them.

Every error the API answers has ARM's shape, so the Azure SDK turns it into an `HttpResponseError`
whose `error.code`, `error.message` and `error.details` mean what they mean on Azure:

    {"error": {"code": "InvalidTemplate", "message": "...",
               "details": [{"code": "InvalidTemplate", "target": "properties.source.type", "message": "..."}]}}

A kiln error (`KilnError`: the user's mistake) becomes a 4xx with one detail per problem, its JSON
path as the target; nothing the client sends gives a 5xx.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kiln.errors import KilnError, NotFound


@dataclass
class ArmError(Exception):
    status: int
    code: str
    message: str
    details: list[dict[str, str]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


def target(path: str) -> str:
    """A kiln JSON path (`.properties.customize[0].name`) as ARM's target (`properties.customize[0].name`)."""
    return path[1:] if path.startswith(".") else path


def from_kiln_error(e: KilnError, *, code: str = "InvalidTemplate") -> ArmError:
    """A user's mistake found by kiln's own checks: 400 (404 for a missing resource), all problems listed."""
    if isinstance(e, NotFound):
        return ArmError(404, "ResourceNotFound", e.message)
    details = [{"code": code, "target": target(p.path),
                "message": p.message + (f" (hint: {p.hint})" if p.hint else "")} for p in e.problems]
    message = details[0]["message"] if len(details) == 1 else f"the template has {len(details)} problems; see details"
    return ArmError(400, code, message, details)


def not_found(kind: str, name: str, resource_group: str) -> ArmError:
    return ArmError(404, "ResourceNotFound",
                    f"The Resource '{kind}/{name}' under resource group '{resource_group}' was not found.")
