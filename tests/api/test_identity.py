"""kiln's managed-identity stand-in and the ARM read paths az needs, seen raw and through the SDK."""

from __future__ import annotations

import base64
import json
import time

import pytest
import requests
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError
from kilnserve import OTHER_SUB, RG, SUB, Server, kiln, start_server

from kiln.api.identity import IdentityKeys, verify

TOKEN_PATH = "/metadata/identity/oauth2/token"


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory):
    s = start_server(tmp_path_factory.mktemp("identity") / "home", tls=True)
    yield s
    s.stop()


def get(server: Server, path: str, **kwargs) -> requests.Response:
    return requests.get(f"{server.url}{path}", verify=str(server.cert), timeout=30, **kwargs)


def mi_token(server: Server, secret: str, resource: str = "https://kiln/") -> requests.Response:
    return get(server, TOKEN_PATH, params={"api-version": "2019-08-01", "resource": resource},
               headers={"X-IDENTITY-HEADER": secret, "Metadata": "true"})


def claims(jwt: str) -> dict:
    part = jwt.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def test_a_kiln_token_buys_a_jwt_with_its_scope(tls_server: Server) -> None:
    secret = tls_server.token("mi", SUB)
    r = mi_token(tls_server, secret)
    assert r.status_code == 200
    body = r.json()
    jwt = body["access_token"]
    c = claims(jwt)
    assert c["aud"] == "https://kiln/" and c["kiln_token"] == "mi" and c["tid"]
    assert 0 < int(body["expires_on"]) - time.time() <= 3600 and body["token_type"] == "Bearer"
    # The JWT is a bearer token with the kiln token's scope, through the SDK's own bearer policy.
    client = tls_server.client(jwt)
    assert list(client.virtual_machine_image_templates.list_by_resource_group(RG)) == []
    other = tls_server.client(jwt, OTHER_SUB)
    with pytest.raises(HttpResponseError) as e:
        list(other.virtual_machine_image_templates.list())
    assert e.value.status_code == 403
    # Kiln's catalog under Azure's read paths takes it as well.
    images = get(tls_server, f"/subscriptions/{SUB}/providers/Microsoft.Compute/images",
                 params={"api-version": "2024-03-01"}, headers={"Authorization": f"Bearer {jwt}"})
    assert images.status_code == 200 and images.json()["value"] == []
    # Tampered with, it is nothing.
    head, body_part, sig = jwt.split(".")
    forged = base64.urlsafe_b64encode(json.dumps({**c, "kiln_token": "someone"}).encode()).rstrip(b"=").decode()
    with pytest.raises(ClientAuthenticationError):
        list(tls_server.client(f"{head}.{forged}.{sig}").virtual_machine_image_templates.list())
    # It expires, and its signature is this state home's alone.
    keys = IdentityKeys.load(tls_server.home)
    assert verify(keys, jwt) is not None and verify(keys, jwt, now=c["exp"]) is None
    assert verify(IdentityKeys(keys.tenant_id, b"another key"), jwt) is None
    # Revoking the kiln token ends the JWTs issued for it, even when a new token takes the name.
    kiln(tls_server.home, "token", "revoke", "mi")
    tls_server.token("mi", SUB)
    with pytest.raises(ClientAuthenticationError):
        list(client.virtual_machine_image_templates.list())


def test_the_identity_endpoint_refuses_what_is_not_a_kiln_token(tls_server: Server) -> None:
    assert mi_token(tls_server, "kiln_wrong").status_code == 401
    imds = get(tls_server, TOKEN_PATH, params={"api-version": "2018-02-01", "resource": "https://kiln/"},
               headers={"Metadata": "true"})  # a VM's IMDS request: kiln has no machine identity to lend
    assert imds.status_code == 400 and "X-IDENTITY-HEADER" in imds.json()["message"]
    assert mi_token(tls_server, tls_server.token("mi-noresource", SUB), resource="").status_code == 400


def test_subscriptions_and_locations(tls_server: Server) -> None:
    scoped = tls_server.token("subs", SUB)
    auth = {"Authorization": f"Bearer {scoped}"}
    subs = get(tls_server, "/subscriptions", params={"api-version": "2022-12-01"}, headers=auth).json()["value"]
    assert [(s["subscriptionId"], s["state"], s["id"]) for s in subs] == [(SUB, "Enabled", f"/subscriptions/{SUB}")]
    one = get(tls_server, f"/subscriptions/{SUB}", params={"api-version": "2022-12-01"}, headers=auth)
    assert one.status_code == 200 and one.json()["tenantId"] == IdentityKeys.load(tls_server.home).tenant_id
    assert get(tls_server, f"/subscriptions/{OTHER_SUB}", params={"api-version": "2022-12-01"},
               headers=auth).status_code == 404
    assert get(tls_server, "/subscriptions", params={"api-version": "2022-12-01"}).status_code == 401
    locations = get(tls_server, f"/subscriptions/{SUB}/locations", params={"api-version": "2022-12-01"},
                    headers=auth).json()["value"]
    assert "westus2" in [x["name"] for x in locations]

    # A token for any subscription sees the subscriptions the catalog holds templates in.
    anywhere = tls_server.token("anywhere")
    client = tls_server.client(anywhere, OTHER_SUB)
    from test_tls import template

    client.virtual_machine_image_templates.begin_create_or_update(RG, "held", template()).result()
    subs = get(tls_server, "/subscriptions", params={"api-version": "2022-12-01"},
               headers={"Authorization": f"Bearer {anywhere}"}).json()["value"]
    assert [s["subscriptionId"] for s in subs] == [OTHER_SUB]


def test_the_metadata_endpoints_name_this_server(tls_server: Server) -> None:
    for path in ("/metadata/endpoints", "//metadata/endpoints"):
        r = get(tls_server, path, params={"api-version": "2022-09-01"})
        assert r.status_code == 200
        assert r.json()["resourceManager"] == f"{tls_server.url}/"
        assert r.json()["authentication"]["audiences"] == [f"{tls_server.url}/"]
    assert isinstance(get(tls_server, "/metadata/endpoints", params={"api-version": "2019-05-01"}).json(), list)
