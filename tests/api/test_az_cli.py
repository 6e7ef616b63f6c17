"""The real az CLI (azure-cli 2.91, its own virtual environment) drives `kiln serve` over HTTPS, unchanged.

`az cloud register` discovers kiln's endpoints, `az login --identity` gets a JWT from kiln's
managed-identity stand-in and lists kiln's subscriptions, then `az image builder` creates, shows,
lists, runs and deletes templates. The last test really builds (integration).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from azcli import Az, log_in, require_az
from kilnserve import RG, SUB, Server, kiln, start_server
from test_tls import openssl_cert

IMAGE = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/images/az-img"


def jwt_claims(token: str) -> dict:
    body = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))


def template_file(folder: Path, name: str, **source) -> Path:
    """A template as az's --image-template reads it (AIB's JSON, as a user keeps it in a file)."""
    doc = {"location": "westus2", "properties": {
        "source": {"type": "PlatformImage", "publisher": "Debian", "offer": "debian-12", "sku": "12-gen2",
                   "version": "latest", **source},
        "customize": [{"type": "Shell", "name": "say", "inline": ["echo hello-from-az"]}],
        "distribute": [{"type": "ManagedImage", "runOutputName": "out", "location": "westus2", "imageId": IMAGE}]}}
    path = folder / f"{name}.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    require_az()
    tmp = tmp_path_factory.mktemp("az")
    server = start_server(tmp / "home", tls=True)
    token = server.token("az", SUB)
    az = Az(tmp / "azure-config", server.cert)
    yield server, token, az
    server.stop()


@pytest.fixture(scope="module")
def logged_in(served) -> tuple[Server, str, Az, list[dict]]:
    server, token, az = served
    return server, token, az, log_in(az, server.url, token)


def test_cloud_register_discovers_kilns_endpoints(served, tmp_path: Path) -> None:
    server, _, _ = served
    az = Az(tmp_path / "azure-config", server.cert)
    az.run("cloud", "register", "--name", "kiln-slash", "--endpoint-resource-manager", f"{server.url}/")
    shown = az.json("cloud", "show", "--name", "kiln-slash")
    assert shown["endpoints"]["activeDirectoryResourceId"] == f"{server.url}/"
    assert shown["endpoints"]["activeDirectory"] == f"{server.url}/"
    config = tmp_path / "cloud.json"
    config.write_text(json.dumps({"endpoints": {"resourceManager": server.url}}))
    az.run("cloud", "register", "--name", "kiln-config", "--cloud-config", f"@{config}")
    assert az.json("cloud", "show", "--name", "kiln-config")["endpoints"]["management"] == f"{server.url}/"


def test_login_with_kilns_managed_identity(logged_in) -> None:
    server, token, az, accounts = logged_in
    assert [(a["id"], a["user"]["type"], a["environmentName"]) for a in accounts] == [(SUB, "servicePrincipal", "kiln")]
    access = az.json("account", "get-access-token")
    assert access["accessToken"] != token  # az holds a short-lived JWT, not the kiln token
    claims = jwt_claims(access["accessToken"])
    assert claims["tid"] == accounts[0]["tenantId"] == access["tenant"]
    assert claims["kiln_token"] == "az"
    assert az.json("account", "show")["id"] == SUB


def test_a_bad_identity_header_cannot_log_in(served, tmp_path: Path) -> None:
    server, _, _ = served
    az = Az(tmp_path / "azure-config", server.cert)
    with pytest.raises(AssertionError, match="not a valid kiln token"):
        log_in(az, server.url, "kiln_not-a-token")


def test_image_builder_create_show_list_run_delete(logged_in, tmp_path: Path) -> None:
    server, _, az, _ = logged_in
    # create from command-line arguments (az checks the destination's location against kiln's)...
    made = az.json("image", "builder", "create", "-g", RG, "-n", "from-args", "--location", "westus2",
                   "--image-source", "Debian:debian-12:12-gen2:latest", "--scripts", "https://127.0.0.1:9/setup.sh",
                   "--managed-image-destinations", "az-img=westus2")
    assert made["provisioningState"] == "Succeeded" and made["distribute"][0]["imageId"] == IMAGE
    # ...and from a template file.
    az.run("image", "builder", "create", "-g", RG, "-n", "from-file", "--image-template",
           str(template_file(tmp_path, "from-file")))
    shown = az.json("image", "builder", "show", "-g", RG, "-n", "from-file")
    assert shown["customize"][0]["inline"] == ["echo hello-from-az"]
    assert shown["id"].endswith(f"/resourceGroups/{RG}/providers/Microsoft.VirtualMachineImages/imageTemplates/from-file")
    assert sorted(t["name"] for t in az.json("image", "builder", "list")) == ["from-args", "from-file"]
    assert az.json("image", "builder", "show-runs", "-g", RG, "-n", "from-file") == []
    bad = az.run("image", "builder", "create", "-g", RG, "-n", "bad", "--location", "nowhere",
                 "--image-source", "Debian:debian-12:12-gen2:latest", "--managed-image-destinations", "x=nowhere",
                 check=False)
    assert bad.returncode != 0 and "nowhere" in bad.stderr

    # A run that fails fast and for real (a Windows source cannot be built here): az shows the failure.
    az.run("image", "builder", "create", "-g", RG, "-n", "windows", "--location", "westus2",
           "--image-source", "MicrosoftWindowsServer:WindowsServer:2022-datacenter-g2:latest",
           "--scripts", "https://127.0.0.1:9/setup.ps1", "--managed-image-destinations", "win-img=westus2")
    run = az.run("image", "builder", "run", "-g", RG, "-n", "windows", check=False)
    assert run.returncode != 0 and "Windows images cannot be built on this host" in run.stderr
    status = az.json("image", "builder", "show", "-g", RG, "-n", "windows")["lastRunStatus"]
    assert status["runState"] == "Failed" and f"(log: {server.url}/" in status["message"]
    cancel = az.run("image", "builder", "cancel", "-g", RG, "-n", "windows", check=False)
    assert cancel.returncode != 0 and "no run in progress" in cancel.stderr

    for name in ("windows", "from-args", "from-file"):
        az.run("image", "builder", "delete", "-g", RG, "-n", name)
    assert az.json("image", "builder", "list") == []
    missing = az.run("image", "builder", "show", "-g", RG, "-n", "from-file", check=False)
    assert missing.returncode != 0 and "ResourceNotFound" in missing.stderr


def test_az_refuses_a_server_it_does_not_trust(logged_in, tmp_path: Path) -> None:
    server, token, az, _ = logged_in
    other, _ = openssl_cert(tmp_path, "someone-else")
    untrusting = Az(az.config_dir, other, az.identity_endpoint, az.identity_header)
    r = untrusting.run("image", "builder", "list", check=False)
    assert r.returncode != 0 and "CERTIFICATE_VERIFY_FAILED" in r.stderr


def test_a_revoked_token_ends_azs_access(served, tmp_path: Path) -> None:
    server, _, _ = served
    az = Az(tmp_path / "azure-config", server.cert)
    log_in(az, server.url, server.token("short-lived", SUB))
    assert az.json("image", "builder", "list") == []
    kiln(server.home, "token", "revoke", "short-lived")
    r = az.run("image", "builder", "list", check=False)
    assert r.returncode != 0 and "not a valid kiln token" in r.stderr


@pytest.mark.integration
def test_az_builds_an_image(tmp_path_factory: pytest.TempPathFactory) -> None:
    """`az image builder run` waits for a real build (bootstrap from the cached root, customize, boot test)."""
    from debian_root import bootstrap_debian12

    require_az()
    tmp = tmp_path_factory.mktemp("az-build")
    cached = bootstrap_debian12(tmp)
    home = tmp / "home"
    home.mkdir()
    (home / "cache").symlink_to(cached.config.cache_dir)  # the build unpacks the cached root
    server = start_server(home, tls=True)
    try:
        az = Az(tmp / "azure-config", server.cert)
        log_in(az, server.url, server.token("az-builder", SUB))
        az.run("image", "builder", "create", "-g", RG, "-n", "deb12", "--image-template", str(template_file(tmp, "deb12")))
        az.run("image", "builder", "run", "-g", RG, "-n", "deb12", timeout=3600)
        status = az.json("image", "builder", "show", "-g", RG, "-n", "deb12")["lastRunStatus"]
        assert status["runState"] == "Succeeded", status
        (out,) = az.json("image", "builder", "show-runs", "-g", RG, "-n", "deb12")
        assert out["name"] == "out" and out["artifactId"].lower() == IMAGE.lower()
        image = json.loads(kiln(home, "image", "show", IMAGE, "--json").stdout)
        assert image["kiln"]["bootTested"] is True
        az.run("image", "builder", "delete", "-g", RG, "-n", "deb12")
        assert az.json("image", "builder", "list") == []
    finally:
        server.stop()
