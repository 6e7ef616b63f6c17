"""Who a request is: a kiln token, or a short-lived JWT that kiln's managed-identity stand-in issued for one.

`az login --identity` gets its token from a managed-identity endpoint and reads the tenant from
the JWT's `tid` claim (without checking the signature), then lists `/subscriptions` with it. kiln
serves such an endpoint at `/metadata/identity/oauth2/token`, in the shape of App Service's
managed identity, which MSAL (and so az) and azure-identity use when two variables are set:

    IDENTITY_ENDPOINT=https://127.0.0.1:8443/metadata/identity/oauth2/token
    IDENTITY_HEADER=<a kiln token from `kiln token create`>

The client sends the kiln token in the `X-IDENTITY-HEADER` header and gets a JWT (HS256, signed
with a key only this state home has) that names the kiln token and expires within the hour. Every
route accepts it as a bearer token with the same scope as the kiln token; revoking the kiln token
ends it too (the JWT names the token's creation time, which a new token of the same name does not
share). The tenant is one id per state home. A request without the header (the IMDS shape a VM's
client sends) is refused: kiln has no machine identity to lend.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import os
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from kiln.store.tokens import Token, Tokens

TOKEN_PATH = "/metadata/identity/oauth2/token"
LIFETIME_S = 3600
ISSUER = "https://kiln.local/identity/"


@dataclass(frozen=True)
class IdentityKeys:
    tenant_id: str
    signing_key: bytes

    @classmethod
    def load(cls, home: Path) -> IdentityKeys:
        """The state home's tenant id and JWT key, made on first use (the file readable by its owner only)."""
        path = home / "identity.json"
        if not path.is_file():
            data = {"tenantId": str(uuid.uuid4()), "signingKey": secrets.token_hex(32)}
            tmp = path.with_name(f".identity.json.{os.getpid()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(data, fh)
            try:
                os.link(tmp, path)  # two servers starting at once: the first one's keys win
            except FileExistsError:
                pass
            finally:
                os.unlink(tmp)
        data = json.loads(path.read_text())
        return cls(data["tenantId"], bytes.fromhex(data["signingKey"]))


@functools.lru_cache(maxsize=8)
def keys_for(home: Path) -> IdentityKeys:
    """The state home's keys, read once per process."""
    return IdentityKeys.load(home)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue(keys: IdentityKeys, token: Token, resource: str, now: float | None = None) -> tuple[str, int]:
    """A JWT standing for `token`, for `resource` (its audience); returns it and its expiry (epoch seconds)."""
    iat = int(now if now is not None else time.time())
    exp = iat + LIFETIME_S
    oid = str(uuid.uuid5(uuid.UUID(keys.tenant_id), f"token:{token.name}:{token.created}"))
    claims = {"aud": resource, "iss": f"{ISSUER}{keys.tenant_id}/", "iat": iat, "nbf": iat, "exp": exp,
              "tid": keys.tenant_id, "oid": oid, "sub": oid, "appid": oid, "idtyp": "app",
              "kiln_token": token.name, "kiln_created": token.created}
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps(claims, separators=(",", ":")).encode())
    sig = hmac.new(keys.signing_key, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(sig)}", exp


def verify(keys: IdentityKeys, jwt: str, now: float | None = None) -> dict[str, Any] | None:
    """The claims of a JWT this state home signed and that has not expired, else None."""
    parts = jwt.split(".")
    if len(parts) != 3:
        return None
    head, body, sig = parts
    want = hmac.new(keys.signing_key, f"{head}.{body}".encode(), hashlib.sha256).digest()
    try:
        if not hmac.compare_digest(want, _unb64(sig)) or json.loads(_unb64(head)).get("alg") != "HS256":
            return None
        claims = json.loads(_unb64(body))
    except ValueError:
        return None
    t = now if now is not None else time.time()
    if not isinstance(claims, dict) or not isinstance(claims.get("exp"), int) or claims["exp"] <= t:
        return None
    return claims


def authenticate(tokens: Tokens, keys: IdentityKeys, secret: str) -> Token | None:
    """The kiln token a bearer secret stands for: the token itself, or a JWT issued for it."""
    if secret.count(".") != 2:
        return tokens.check(secret)
    claims = verify(keys, secret)
    if claims is None:
        return None
    for t in tokens.list():
        if t.name == claims.get("kiln_token") and t.created == claims.get("kiln_created"):
            return t
    return None  # revoked since


def bearer(request: Request) -> str | None:
    scheme, _, secret = request.headers.get("authorization", "").partition(" ")
    return secret.strip() if scheme.lower() == "bearer" else None


def _refuse(status: int, error: str, message: str) -> JSONResponse:
    # Both shapes MSAL reads: App Service's (statusCode, message) and OAuth2's (error, error_description).
    return JSONResponse({"statusCode": status, "message": message, "error": error, "error_description": message},
                        status_code=status)


def router(tokens_of: Callable[[], Tokens], keys: IdentityKeys) -> APIRouter:
    """The managed-identity stand-in; `tokens_of()` gives this thread's Tokens."""
    r = APIRouter()

    @r.get(TOKEN_PATH)
    def managed_identity_token(request: Request) -> JSONResponse:
        resource = request.query_params.get("resource") or ""
        if not resource:
            return _refuse(400, "invalid_request", "the 'resource' query parameter is required")
        secret = request.headers.get("x-identity-header")
        if not secret:
            return _refuse(400, "invalid_request",
                           "kiln's managed identity needs a kiln token in the X-IDENTITY-HEADER header: set "
                           "IDENTITY_ENDPOINT to this URL and IDENTITY_HEADER to a token from `kiln token create`")
        token = tokens_of().check(secret.strip())
        if token is None:
            return _refuse(401, "invalid_client", "the X-IDENTITY-HEADER is not a valid kiln token")
        jwt, exp = issue(keys, token, resource)
        now = int(time.time())
        return JSONResponse({"access_token": jwt, "token_type": "Bearer", "resource": resource,
                             "expires_on": str(exp), "expires_in": str(exp - now), "ext_expires_in": str(exp - now),
                             "not_before": str(now), "client_id": claims_oid(jwt)})

    return r


def claims_oid(jwt: str) -> str:
    return str(json.loads(_unb64(jwt.split(".")[1]))["oid"])
