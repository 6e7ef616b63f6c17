"""What Azure's tools ask ARM before they touch a resource: the cloud's endpoints, subscriptions, locations.

- `GET /metadata/endpoints?api-version=...` (no token, as on ARM): the endpoints of a cloud whose
  resource manager is this server. `az cloud register -n kiln --endpoint-resource-manager
  https://HOST:PORT` reads it, so az needs nothing else to be told.
- `GET /subscriptions` and `/subscriptions/{id}`: `az login` lists them after it has a token. A
  token scoped to subscriptions sees those; a token for any subscription (`*`) sees the ones the
  catalog holds resources in (so give `--subscription` to the token that `az login` uses).
- `GET /subscriptions/{id}/locations`: `az image builder create` checks its destinations' locations
  against it; kiln answers its configured regions and allowed locations.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from kiln.api.errors import ArmError
from kiln.api.identity import IdentityKeys, authenticate, bearer
from kiln.config import Config
from kiln.store.store import Store
from kiln.store.tokens import Token, Tokens

ENDPOINTS_PATH = "/metadata/endpoints"


def cloud(base: str, name: str = "kiln") -> dict[str, Any]:
    """ARM's description of a cloud (api-version 2022-09-01's shape) whose every endpoint is this server."""
    root = base.rstrip("/") + "/"
    return {
        "name": name,
        "resourceManager": root,
        "portal": root,
        "gallery": root,
        "authentication": {"loginEndpoint": root, "audiences": [root], "tenant": "common", "identityProvider": "AAD"},
        "suffixes": {},
    }


def _old_shape(base: str) -> dict[str, Any]:
    """api-version 2015-01-01: the shape older tools read."""
    root = base.rstrip("/") + "/"
    return {"galleryEndpoint": root, "portalEndpoint": root, "graphEndpoint": root,
            "authentication": {"loginEndpoint": root, "audiences": [root]}}


def router(store_of: Callable[[], Store], config: Config, keys: IdentityKeys) -> APIRouter:
    r = APIRouter()

    def who(request: Request) -> Token:
        secret = bearer(request)
        if not request.headers.get("authorization"):
            raise ArmError(401, "AuthenticationFailed", "Authentication failed. The 'Authorization' header is missing.")
        token = authenticate(Tokens(store_of().catalog), keys, secret) if secret else None
        if token is None:
            raise ArmError(401, "InvalidAuthenticationToken", "The access token is invalid.")
        if not request.query_params.get("api-version"):
            raise ArmError(400, "MissingApiVersionParameter",
                           "The api-version query parameter (?api-version=) is required for all requests.")
        return token

    def subscription(sub: str) -> dict[str, Any]:
        return {"id": f"/subscriptions/{sub}", "subscriptionId": sub, "tenantId": keys.tenant_id,
                "displayName": f"kiln {sub}", "state": "Enabled", "authorizationSource": "RoleBased",
                "managedByTenants": [], "tags": {},
                "subscriptionPolicies": {"locationPlacementId": "Public_2014-09-01", "quotaId": "kiln",
                                         "spendingLimit": "Off"}}

    def visible(token: Token) -> list[str]:
        subs = {s for s in token.subscriptions if s != "*"}
        if "*" in token.subscriptions:
            subs |= held_subscriptions(store_of())
        return sorted(subs)

    def endpoints(request: Request) -> JSONResponse:
        base = str(request.base_url)
        version = request.query_params.get("api-version", "")
        if version == "2015-01-01":
            return JSONResponse(_old_shape(base))
        if version == "2019-05-01":  # that version lists every cloud the endpoint knows
            return JSONResponse([cloud(base)])
        return JSONResponse(cloud(base))

    # `az cloud register --endpoint-resource-manager https://host:port/` appends the path to the slash.
    r.add_api_route(ENDPOINTS_PATH, endpoints, methods=["GET"])
    r.add_api_route("/" + ENDPOINTS_PATH, endpoints, methods=["GET"], include_in_schema=False)

    @r.get("/subscriptions")
    def list_subscriptions(request: Request) -> dict[str, Any]:
        return {"value": [subscription(s) for s in visible(who(request))]}

    @r.get("/subscriptions/{sub}")
    def get_subscription(request: Request, sub: str) -> dict[str, Any]:
        token = who(request)
        if sub.lower() not in visible(token) and not token.allows(sub):
            raise ArmError(404, "SubscriptionNotFound", f"The subscription '{sub}' could not be found.")
        return subscription(sub.lower())

    @r.get("/subscriptions/{sub}/locations")
    def list_locations(request: Request, sub: str) -> dict[str, Any]:
        token = who(request)
        if not token.allows(sub):
            raise ArmError(403, "AuthorizationFailed",
                           f"The client '{token.name}' does not have authorization over scope '/subscriptions/{sub}'.")
        names = [g.name for g in config.regions] + list(config.allowed_locations or ())
        return {"value": [{"id": f"/subscriptions/{sub}/locations/{n}", "name": n, "displayName": n,
                           "regionalDisplayName": n, "type": "Region",
                           "metadata": {"regionType": "Physical", "regionCategory": "Recommended"}}
                          for n in dict.fromkeys(names)]}

    return r


def held_subscriptions(store: Store) -> set[str]:
    """Subscriptions the catalog holds image templates or images in (ids are stored lower-cased as keys)."""
    subs = set()
    for table in ("api_templates", "images"):
        for row in store.catalog.query(f"SELECT key FROM {table}"):
            parts = str(row["key"]).split("/")
            if len(parts) > 2 and parts[1] == "subscriptions":
                subs.add(parts[2].lower())
    return subs
