"""The REST API's rules, through Azure's SDK against a real `kiln serve`: no build needed."""

from __future__ import annotations

import hashlib
import http.client
import json
import time

import pytest
import requests
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError
from azure.mgmt.imagebuilder import models as m
from kilnserve import API_VERSION, OTHER_SUB, RG, SUB, kiln, start_server

IMAGE_ID = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/images/api-unit"


def template(**props) -> m.ImageTemplate:
    return m.ImageTemplate(
        location="westus2",
        tags={"team": "kiln"},
        properties=m.ImageTemplateProperties(
            source=m.ImageTemplatePlatformImageSource(publisher="Debian", offer="debian-12", sku="12-gen2", version="latest"),
            customize=[m.ImageTemplateShellCustomizer(name="hello", inline=["echo hello"])],
            distribute=[m.ImageTemplateManagedImageDistributor(run_output_name="out", image_id=IMAGE_ID, location="westus2")],
            **props,
        ),
    )


@pytest.fixture(scope="module")
def token(server) -> str:
    return server.token("writer", SUB)


def test_create_get_list_patch_delete(server, token) -> None:
    client = server.client(token)
    created = client.virtual_machine_image_templates.begin_create_or_update(RG, "unit", template()).result()
    assert created.id == f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.VirtualMachineImages/imageTemplates/unit"
    assert created.name == "unit" and created.type == "Microsoft.VirtualMachineImages/imageTemplates"
    assert created.properties.provisioning_state == "Succeeded"
    assert created.properties.exact_staging_resource_group.startswith(f"/subscriptions/{SUB}/resourceGroups/IT_{RG}_unit_")
    assert created.system_data.created_by == "writer"
    assert created.properties.last_run_status is None  # no autoRun: nothing ran
    got = client.virtual_machine_image_templates.get(RG, "unit")
    assert got.properties.customize[0].inline == ["echo hello"]
    assert [t.name for t in client.virtual_machine_image_templates.list_by_resource_group(RG)] == ["unit"]
    assert [t.name for t in client.virtual_machine_image_templates.list()] == ["unit"]

    # The same PUT again is fine; a different one is refused as Azure refuses it, and the template is unchanged.
    client.virtual_machine_image_templates.begin_create_or_update(RG, "unit", template()).result()
    changed = template()
    changed.properties.customize[0].inline = ["echo changed"]
    with pytest.raises(HttpResponseError) as e:
        client.virtual_machine_image_templates.begin_create_or_update(RG, "unit", changed).result()
    assert e.value.status_code == 409 and "not supported" in e.value.error.message
    assert client.virtual_machine_image_templates.get(RG, "unit").properties.customize[0].inline == ["echo hello"]

    # Tags change through PATCH.
    patched = client.virtual_machine_image_templates.begin_update(
        RG, "unit", m.ImageTemplateUpdateParameters(tags={"team": "images"})).result()
    assert patched.tags == {"team": "images"}
    assert client.virtual_machine_image_templates.get(RG, "unit").tags == {"team": "images"}

    # Nothing to cancel.
    with pytest.raises(HttpResponseError) as e:
        client.virtual_machine_image_templates.begin_cancel(RG, "unit").result()
    assert e.value.status_code == 409

    client.virtual_machine_image_templates.begin_delete(RG, "unit").result()
    with pytest.raises(ResourceNotFoundError) as e:
        client.virtual_machine_image_templates.get(RG, "unit")
    assert e.value.error.code == "ResourceNotFound"
    client.virtual_machine_image_templates.begin_delete(RG, "unit").result()  # deleting what is gone: fine (204)


def test_an_invalid_template_is_400_with_one_detail_per_problem(server, token) -> None:
    client = server.client(token)
    bad = template()
    bad.properties.customize = [m.ImageTemplateShellCustomizer(name="nothing")]  # neither inline nor scriptUri
    bad.properties.build_timeout_in_minutes = 5000
    with pytest.raises(HttpResponseError) as e:
        client.virtual_machine_image_templates.begin_create_or_update(RG, "bad", bad).result()
    assert e.value.status_code == 400
    targets = {d.target for d in e.value.error.details}
    assert targets == {"properties.buildTimeoutInMinutes", "properties.customize[0]"}
    # The same problems `kiln validate` finds in the same document, at the same paths.
    doc = {"type": "Microsoft.VirtualMachineImages/imageTemplates", "apiVersion": API_VERSION, "name": "bad",
           **bad.as_dict()}
    path = server.home / "bad.json"
    path.write_text(json.dumps(doc))
    cli = kiln(server.home, "validate", "--json", str(path), check=False)
    assert cli.returncode == 2
    cli_paths = {p["path"].lstrip(".") for p in json.loads(cli.stdout)}
    assert cli_paths == targets
    with pytest.raises(ResourceNotFoundError):
        client.virtual_machine_image_templates.get(RG, "bad")


def test_a_failed_run_names_its_log_url(server, token) -> None:
    """A run that fails before any bootstrap (a Windows source cannot be built here): quick, and real."""
    client = server.client(token)
    t = template()
    t.properties.source = m.ImageTemplatePlatformImageSource(publisher="MicrosoftWindowsServer", offer="WindowsServer",
                                                             sku="2022-datacenter-g2", version="latest")
    t.properties.customize = [m.ImageTemplatePowerShellCustomizer(name="hello", inline=["Write-Output hello"])]
    client.virtual_machine_image_templates.begin_create_or_update(RG, "windows", t).result()
    with pytest.raises(HttpResponseError) as e:
        client.virtual_machine_image_templates.begin_run(RG, "windows").result()
    assert "Windows" in str(e.value)
    status = client.virtual_machine_image_templates.get(RG, "windows").properties.last_run_status
    assert status.run_state == "Failed"
    url = status.message.split("(log: ", 1)[1].rstrip(")")
    assert url.startswith(f"{server.url}/subscriptions/{SUB}/") and "/runs/" in url
    log = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert log.status_code == 200 and "Windows images cannot be built on this host" in log.text
    assert requests.get(url, timeout=30).status_code == 401
    client.virtual_machine_image_templates.begin_delete(RG, "windows").result()

    # autoRun starts a run on create (this one fails as quickly).
    t.properties.auto_run = m.ImageTemplateAutoRun(state="Enabled")
    client.virtual_machine_image_templates.begin_create_or_update(RG, "windows-auto", t).result()
    deadline = time.monotonic() + 120
    while (status := client.virtual_machine_image_templates.get(RG, "windows-auto").properties.last_run_status) is None \
            or status.run_state == "Running":
        assert time.monotonic() < deadline, "the autoRun run did not end"
        time.sleep(0.5)
    assert status.run_state == "Failed" and "Windows" in status.message
    client.virtual_machine_image_templates.begin_delete(RG, "windows-auto").result()


def test_local_paths_from_the_network_are_refused(server, token) -> None:
    client = server.client(token)
    script = server.home / "script.sh"
    script.write_text("echo hi\n")
    t = template()
    t.properties.customize = [m.ImageTemplateShellCustomizer(name="local", script_uri=f"file://{script}"),
                              m.ImageTemplateFileCustomizer(name="plain", source_uri="/etc/shadow", destination="/tmp/x")]
    with pytest.raises(HttpResponseError) as e:
        client.virtual_machine_image_templates.begin_create_or_update(RG, "local", t).result()
    assert e.value.status_code == 400
    assert {d.target for d in e.value.error.details} >= {"properties.customize[0].scriptUri",
                                                         "properties.customize[1].sourceUri"}


def test_401_without_or_with_a_bad_token(server) -> None:
    for secret in ("", "kiln_not-a-real-token"):
        client = server.client(secret)
        with pytest.raises(ClientAuthenticationError) as e:
            client.virtual_machine_image_templates.get(RG, "any")
        assert e.value.status_code == 401
        assert e.value.error.code in ("AuthenticationFailed", "InvalidAuthenticationToken")


def test_403_out_of_scope_or_read_only(server, token) -> None:
    with pytest.raises(HttpResponseError) as e:
        server.client(token, OTHER_SUB).virtual_machine_image_templates.get(RG, "any")
    assert e.value.status_code == 403 and e.value.error.code == "AuthorizationFailed"

    reader = server.client(server.token("reader", SUB, read_only=True))
    assert list(reader.virtual_machine_image_templates.list()) is not None
    with pytest.raises(HttpResponseError) as e:
        reader.virtual_machine_image_templates.begin_create_or_update(RG, "ro", template()).result()
    assert e.value.status_code == 403 and e.value.error.code == "AuthorizationFailed"

    kiln(server.home, "token", "revoke", "reader")
    with pytest.raises(ClientAuthenticationError):
        reader.virtual_machine_image_templates.get(RG, "any")
    listed = json.loads(kiln(server.home, "token", "list", "--json").stdout)
    assert [(t["name"], t["subscriptions"], t["readOnly"]) for t in listed] == [("writer", [SUB.lower()], False)]
    anywhere = server.client(server.token("anywhere"), OTHER_SUB)  # no --subscription: any subscription
    assert list(anywhere.virtual_machine_image_templates.list()) == []
    kiln(server.home, "token", "revoke", "anywhere")
    assert token not in kiln(server.home, "token", "list", "--json").stdout
    catalog = b"".join(f.read_bytes() for f in server.home.glob("catalog.sqlite*"))
    assert hashlib.sha256(token.encode()).hexdigest().encode() in catalog  # its hash is kept...
    assert token.encode() not in catalog  # ...never the token
    bad_name = kiln(server.home, "token", "create", "no spaces", "--subscription", SUB, check=False)
    assert bad_name.returncode == 2 and "Traceback" not in bad_name.stderr


def test_paths_are_case_insensitive_as_in_arm(server, token) -> None:
    url = (f"{server.url}/SUBSCRIPTIONS/{SUB}/resourcegroups/{RG}/providers/microsoft.virtualmachineimages/"
           "imagetemplates")
    r = requests.get(url, params={"api-version": API_VERSION}, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 200 and "value" in r.json()


def test_unknown_api_version_is_400(server, token) -> None:
    client = server.client(token)
    client._config.api_version = "2099-01-01"
    client.virtual_machine_image_templates._config.api_version = "2099-01-01"
    with pytest.raises(HttpResponseError) as e:
        client.virtual_machine_image_templates.get(RG, "any")
    assert e.value.status_code == 400 and e.value.error.code == "InvalidApiVersionParameter"


def test_bad_bodies_are_4xx_not_5xx(server, token) -> None:
    url = f"{server.url}/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.VirtualMachineImages/imageTemplates/raw"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    params = {"api-version": API_VERSION}
    for body in (b"not json", b"[1, 2]", b'{"properties": 7}', json.dumps({"location": "westus2"}).encode()):
        r = requests.put(url, params=params, data=body, headers=headers, timeout=30)
        assert r.status_code == 400, (body, r.text)
        assert set(r.json()["error"]) == {"code", "message", "details"}
    # A body past the limit is refused on its Content-Length, before it is read.
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.putrequest("PUT", f"{url.removeprefix(server.url)}?api-version={API_VERSION}")
    for k, v in {**headers, "Content-Length": str(5 * 1024 * 1024)}.items():
        conn.putheader(k, v)
    conn.endheaders()
    r = conn.getresponse()
    assert r.status == 413 and json.loads(r.read())["error"]["code"] == "RequestEntityTooLarge"
    conn.close()


def test_every_body_taking_route_stops_reading_past_the_limit(server, token) -> None:
    """Without a Content-Length (chunked), a body is refused once the bytes received pass the limit,
    on template PUT and PATCH and on a trigger's PUT alike: the server answers ARM's 413 while the
    client is still sending, so it never reads the rest."""
    client = server.client(token)
    client.virtual_machine_image_templates.begin_create_or_update(RG, "big", template()).result()
    base = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.VirtualMachineImages/imageTemplates"
    limit = 4 * 1024 * 1024
    chunk = b" " * (256 * 1024)
    for method, path in (("PUT", f"{base}/big2"), ("PATCH", f"{base}/big"), ("PUT", f"{base}/big/triggers/t")):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        conn.putrequest(method, f"{path}?api-version={API_VERSION}")
        for k, v in {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                     "Transfer-Encoding": "chunked"}.items():
            conn.putheader(k, v)
        conn.endheaders()
        sent = 0
        try:
            conn.send(b"%x\r\n{\r\n" % 1)
            while sent < 8 * limit:  # far past the limit: a server reading it all would take it all
                conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed while we were still sending
        r = conn.getresponse()
        assert r.status == 413, (method, path, r.status)
        assert json.loads(r.read())["error"]["code"] == "RequestEntityTooLarge"
        assert sent < 8 * limit, "the server read the whole body before refusing it"
        conn.close()
    assert client.virtual_machine_image_templates.get(RG, "big").tags == {"team": "kiln"}  # PATCH changed nothing
    client.virtual_machine_image_templates.begin_delete(RG, "big").result()


def test_plain_http_only_on_loopback(tmp_path) -> None:
    public = kiln(tmp_path, "serve", "--insecure-http", "--host", "0.0.0.0", "--port", "1", check=False)
    assert public.returncode == 2 and "loopback" in public.stderr and "Traceback" not in public.stderr


def test_the_wire_protocol_is_arms(server, token) -> None:
    """What the SDK relies on, seen raw: 201 + Azure-AsyncOperation on PUT, 202 + Location on DELETE."""
    url = f"{server.url}/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.VirtualMachineImages/imageTemplates/wire"
    auth = {"Authorization": f"Bearer {token}"}
    params = {"api-version": API_VERSION}
    r = requests.put(url, params=params, json=template().as_dict(), headers=auth, timeout=30)
    assert r.status_code == 201 and r.headers["Retry-After"] == "1"
    op = requests.get(r.headers["Azure-AsyncOperation"], headers=auth, timeout=30)
    assert op.status_code == 200 and op.json()["status"] == "Succeeded"
    assert requests.get(url, params=params, headers=auth, timeout=30).json()["properties"]["provisioningState"] == "Succeeded"
    r = requests.delete(url, params=params, headers=auth, timeout=30)
    assert r.status_code == 202 and r.headers["Retry-After"] == "1"
    assert requests.get(r.headers["Location"], headers=auth, timeout=30).status_code == 204
    assert requests.get(url, params=params, headers=auth, timeout=30).status_code == 404


def test_local_paths_inside_the_configured_roots_are_allowed(tmp_path) -> None:
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "hello.sh").write_text("echo hello\n")
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(f'[api]\nlocal_roots = ["{scripts}"]\n')
    server = start_server(home)
    try:
        client = server.client(server.token("local", SUB))
        t = template()
        t.properties.customize = [m.ImageTemplateShellCustomizer(name="inside", script_uri=f"file://{scripts}/hello.sh")]
        client.virtual_machine_image_templates.begin_create_or_update(RG, "inside", t).result()
        t.properties.customize = [m.ImageTemplateShellCustomizer(name="escape", script_uri=f"{scripts}/../home/config.toml")]
        with pytest.raises(HttpResponseError) as e:
            client.virtual_machine_image_templates.begin_create_or_update(RG, "escape", t).result()
        assert e.value.status_code == 400
        assert [d.target for d in e.value.error.details] == ["properties.customize[0].scriptUri"]
    finally:
        server.stop()
