"""`kiln serve` speaks HTTPS: its own self-signed certificate by default, or the user's.

The clients are the real ones (azure-mgmt-imagebuilder, requests, Python's ssl) trusting only the
certificate file kiln names; the certificates the tests compare against are read with Python's
ssl module and made with the openssl program, not with kiln's code.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import ssl
import subprocess
from pathlib import Path

import pytest
import requests
from azure.core.exceptions import ServiceRequestError
from azure.mgmt.imagebuilder import models as m
from kilnserve import RG, SUB, Server, kiln, start_server

from envcheck import unavailable


def sha256_of_pem(path: Path) -> str:
    der = ssl.PEM_cert_to_DER_cert(path.read_text())
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def served_fingerprint(port: int) -> str:
    """The SHA-256 of the certificate the server actually presents (no verification: we only look)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw, ctx.wrap_socket(raw) as s:
        der = s.getpeercert(binary_form=True)
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def template() -> m.ImageTemplate:
    return m.ImageTemplate(location="westus2", properties=m.ImageTemplateProperties(
        source=m.ImageTemplatePlatformImageSource(publisher="Debian", offer="debian-12", sku="12-gen2", version="latest"),
        customize=[m.ImageTemplateShellCustomizer(name="hello", inline=["echo hello"])],
        distribute=[m.ImageTemplateManagedImageDistributor(
            run_output_name="out", location="westus2",
            image_id=f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/images/tls")]))


def openssl_cert(folder: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 made by the openssl program."""
    if subprocess.run(["openssl", "version"], capture_output=True).returncode != 0:
        unavailable("openssl is not installed")
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-days", "2", "-subj", f"/CN={name}", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,digitalSignature,keyCertSign",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory):
    s = start_server(tmp_path_factory.mktemp("tls") / "home", tls=True)
    yield s
    s.stop()


def test_https_by_default_with_a_self_signed_certificate_it_names(tls_server: Server) -> None:
    log = (tls_server.home / "serve.log").read_text()
    assert f"https://127.0.0.1:{tls_server.port}" in log
    assert f"TLS certificate {tls_server.cert}" in log
    printed = re.search(r"SHA-256 fingerprint ([0-9A-F:]{95})", log).group(1)
    assert printed == sha256_of_pem(tls_server.cert) == served_fingerprint(tls_server.port)
    assert (tls_server.cert.parent / "serve.key").stat().st_mode & 0o077 == 0  # the key is the owner's alone
    shown = json.loads(kiln(tls_server.home, "serve", "cert", "--json").stdout)
    assert shown["certificate"] == str(tls_server.cert) and shown["sha256Fingerprint"] == printed
    assert not shown["createdNow"]
    assert kiln(tls_server.home, "serve", "cert", "--path").stdout == f"{tls_server.cert}\n"


def test_the_sdk_works_unchanged_trusting_the_certificate(tls_server: Server) -> None:
    """No authentication policy of the test's: azure-core's own bearer policy, which insists on https."""
    client = tls_server.client(tls_server.token("tls-writer", SUB))
    created = client.virtual_machine_image_templates.begin_create_or_update(RG, "over-tls", template()).result()
    assert created.properties.provisioning_state == "Succeeded"
    assert [t.name for t in client.virtual_machine_image_templates.list()] == ["over-tls"]
    client.virtual_machine_image_templates.begin_delete(RG, "over-tls").result()
    # The operation URLs the server hands out are https too (the poller followed them above).
    token = tls_server.token("tls-raw", SUB)
    r = requests.put(f"{tls_server.url}/subscriptions/{SUB}/resourceGroups/{RG}/providers/"
                     "Microsoft.VirtualMachineImages/imageTemplates/raw", params={"api-version": "2025-10-01"},
                     json=template().as_dict(), headers={"Authorization": f"Bearer {token}"},
                     verify=str(tls_server.cert), timeout=30)
    assert r.status_code == 201 and r.headers["Azure-AsyncOperation"].startswith(f"{tls_server.url}/")


def test_a_client_that_does_not_trust_the_certificate_fails(tls_server: Server, tmp_path: Path) -> None:
    other, _ = openssl_cert(tmp_path, "someone-else")
    url = f"{tls_server.url}/metadata/endpoints?api-version=2022-09-01"
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(url, verify=str(other), timeout=30)
    with pytest.raises(requests.exceptions.SSLError):  # the public CAs (certifi) do not vouch for it either
        requests.get(url, timeout=30)
    client = tls_server.client(tls_server.token("tls-untrusting", SUB))
    client._client._pipeline._transport.connection_config.verify = str(other)
    with pytest.raises(ServiceRequestError, match="CERTIFICATE_VERIFY_FAILED"):
        client.virtual_machine_image_templates.get(RG, "any")
    assert requests.get(url, verify=str(tls_server.cert), timeout=30).status_code == 200
    with pytest.raises(requests.exceptions.ConnectionError):  # no plain http on the TLS port
        requests.get(url.replace("https://", "http://"), timeout=30)


def test_the_certificate_survives_a_restart(tls_server: Server) -> None:
    before = sha256_of_pem(tls_server.cert)
    tls_server.stop()
    tls_server.start()
    assert sha256_of_pem(tls_server.cert) == before == served_fingerprint(tls_server.port)
    assert "made a self-signed" not in (tls_server.home / "serve.log").read_text().split("server stopped")[-1]


def test_the_users_own_certificate(tmp_path: Path) -> None:
    cert, key = openssl_cert(tmp_path, "mine")
    server = start_server(tmp_path / "home", tls=True, args=("--tls-cert", str(cert), "--tls-key", str(key)))
    try:
        assert served_fingerprint(server.port) == sha256_of_pem(cert)
        assert f"SHA-256 fingerprint {sha256_of_pem(cert)}" in (server.home / "serve.log").read_text()
        assert not server.cert.exists()  # kiln made no certificate of its own
        r = requests.get(f"{server.url}/metadata/endpoints?api-version=2022-09-01", verify=str(cert), timeout=30)
        assert r.status_code == 200 and r.json()["resourceManager"] == f"{server.url}/"
    finally:
        server.stop()


def test_tls_mistakes_are_clear_errors(tmp_path: Path) -> None:
    cert, _ = openssl_cert(tmp_path, "a")
    _, other_key = openssl_cert(tmp_path, "b")
    cases = [
        (("--tls-cert", str(cert)), "go together"),
        (("--tls-cert", str(cert), "--tls-key", str(other_key)), "cannot be used together"),
        (("--tls-cert", str(tmp_path / "missing.crt"), "--tls-key", str(other_key)), "not a readable file"),
        (("--insecure-http", "--tls-cert", str(cert), "--tls-key", str(other_key)), "plain http"),
    ]
    for args, message in cases:
        r = kiln(tmp_path / "home", "serve", "--port", "1", *args, check=False)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)


def test_kilns_certificate_is_made_again_when_near_its_end_or_not_naming_the_address(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "tls").mkdir(parents=True)
    cert, key = openssl_cert(tmp_path, "old")  # valid for 2 days: within the renewal window
    (home / "tls" / "serve.crt").write_bytes(cert.read_bytes())
    (home / "tls" / "serve.key").write_bytes(key.read_bytes())
    renewed = json.loads(kiln(home, "serve", "cert", "--json").stdout)
    assert renewed["createdNow"] and renewed["sha256Fingerprint"] != sha256_of_pem(cert)
    again = json.loads(kiln(home, "serve", "cert", "--json").stdout)
    assert not again["createdNow"] and again["sha256Fingerprint"] == renewed["sha256Fingerprint"]
    other = json.loads(kiln(home, "serve", "cert", "--host", "127.0.0.2", "--json").stdout)
    assert other["createdNow"]
    text = subprocess.run(["openssl", "x509", "-in", other["certificate"], "-noout", "-ext", "subjectAltName"],
                          capture_output=True, text=True, check=True).stdout
    assert "IP Address:127.0.0.2" in text and "IP Address:127.0.0.1" in text and "DNS:localhost" in text
