"""The checks every read path outside imageTemplates makes, as ARM makes them (kiln.api.compute,
kiln.api.devtestlab, kiln.api.triggers).

The same bearer tokens as the imageTemplates routes (kiln.store.tokens: scoped to subscriptions,
read-only ones only GET), the same ARM-shaped 401/403, then the request's `api-version`, which each
resource provider checks against the versions it has: kiln answers every version up to the newest
that the Azure SDK it is tested with sends (the shapes of these read paths have not changed in a way
a reader notices), and refuses a malformed or later one with ARM's `InvalidApiVersionParameter`.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from fastapi import Request

from kiln.api import identity
from kiln.api.errors import ArmError
from kiln.api.service import Service
from kiln.store.tokens import Token, Tokens

T = TypeVar("T")
_API_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}(-preview|-beta|-privatepreview)?$")


def authorize(service: Service, request: Request, sub: str, action: str, *, write: bool = False) -> Token:
    """The request's token, allowed `action` on subscription `sub` (else 401/403 in ARM's shape)."""
    header = request.headers.get("authorization", "")
    if not header:
        raise ArmError(401, "AuthenticationFailed", "Authentication failed. The 'Authorization' header is missing.")
    scheme, _, secret = header.partition(" ")
    token = identity.authenticate(Tokens(service.store().catalog), identity.keys_for(service.config.home),
                                  secret.strip()) if scheme.lower() == "bearer" else None  # a kiln token, or its JWT
    if token is None:
        raise ArmError(401, "InvalidAuthenticationToken", "The access token is invalid.")
    if not token.allows(sub) or (write and token.read_only):
        raise ArmError(403, "AuthorizationFailed",
                       f"The client '{token.name}' does not have authorization to perform action '{action}' "
                       f"over scope '/subscriptions/{sub}' or the scope is invalid.")
    return token


def api_version(request: Request, newest: str, known: tuple[str, ...] = ()) -> str:
    """The request's api-version: one of `known` if given, else any well-formed one up to `newest`."""
    version = request.query_params.get("api-version")
    if not version:
        raise ArmError(400, "MissingApiVersionParameter",
                       "The api-version query parameter (?api-version=) is required for all requests.")
    ok = version in known if known else bool(_API_VERSION.match(version)) and version[:10] <= newest
    if not ok:
        supported = ",".join(known) if known else f"any up to {newest}"
        raise ArmError(400, "InvalidApiVersionParameter",
                       f"The api-version '{version}' is invalid. The supported versions are '{supported}'.")
    return version


async def json_object(request: Request) -> dict[str, Any]:
    """The request's body as a JSON object (else ARM's 400). Its size is limited before it gets
    here: kiln.api.app.ArmRequests refuses a body past the server's limit while it streams in."""
    try:
        body = json.loads(await request.body())
    except ValueError as e:
        raise ArmError(400, "InvalidRequestContent", f"the request body is not JSON: {e}") from None
    if not isinstance(body, dict):
        raise ArmError(400, "InvalidRequestContent", "the request body must be a JSON object")
    return body


def listing(service: Service, request: Request, items: Sequence[T], render: Callable[[T], dict[str, Any]],
            *, top: bool = False) -> dict[str, Any]:
    """One page of a list, as ARM pages it: `{"value": [...], "nextLink": URL}`, at most the server's
    page size (ServeSettings.page_size) of `items` rendered, and while more follow a nextLink, this
    request's URL with an opaque `$skipToken`, which the SDK's pagers follow. With `top` (the lists
    whose ARM operation takes OData's $top) at most $top items in all."""
    limit = len(items)
    if top and (given := request.query_params.get("$top")) is not None:
        if not given.isdigit() or int(given) < 1:
            raise ArmError(400, "InvalidQueryParameterValue", f"$top must be a positive integer, not {given!r}")
        limit = min(limit, int(given))
    start = _offset(request.query_params.get("$skipToken") or request.query_params.get("$skiptoken"))
    end = min(start + service.settings.page_size, limit)
    page: dict[str, Any] = {"value": [render(i) for i in items[start:end]]}
    if end < limit:
        token = base64.urlsafe_b64encode(f"kiln:{end}".encode()).decode().rstrip("=")
        page["nextLink"] = str(request.url.remove_query_params(["$skipToken", "$skiptoken"])
                               .include_query_params(**{"$skipToken": token}))
    return page


def _offset(token: str | None) -> int:
    """Where a `$skipToken` that listing() wrote goes on from (anything else: ARM's 400)."""
    if token is None:
        return 0
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except ValueError:
        text = ""
    kind, _, n = text.partition(":")
    if kind != "kiln" or not n.isdigit():
        raise ArmError(400, "InvalidQueryParameterValue", f"$skipToken {token!r} is not one this server gave",
                       [{"code": "InvalidQueryParameterValue", "target": "$skipToken",
                         "message": "follow the nextLink of the previous page as it is"}])
    return int(n)


def scoped(items: Iterable[T], subscription: str, resource_group: str | None = None) -> list[T]:
    """The items (each with an `id`) that lie in a subscription (and resource group)."""
    return [i for i in items if in_scope(str(i.id), subscription, resource_group)]  # type: ignore[attr-defined]


def in_scope(resource_id: str, subscription: str, resource_group: str | None = None) -> bool:
    """Whether an id lies in a subscription (and resource group), compared as ARM compares: case-insensitively."""
    prefix = f"/subscriptions/{subscription}/".lower()
    if resource_group is not None:
        prefix += f"resourcegroups/{resource_group}/".lower()
    return resource_id.lower().startswith(prefix)
