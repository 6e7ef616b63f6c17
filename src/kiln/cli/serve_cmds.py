"""`kiln serve` (the AIB REST API, kiln.api) and `kiln token` (its access tokens)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from kiln.cli import App, pass_app
from kiln.cli.common import emit, make_monitor, open_store

if TYPE_CHECKING:
    from kiln.api.tls import ServerCert


@click.group("serve", invoke_without_command=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8443, show_default=True)
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True, help="Builds at a time.")
@click.option("--max-body", type=click.IntRange(1024), default=None, help="Largest request body, in bytes (default 4 MiB).")
@click.option("--tls-cert", "--cert", "cert", type=click.Path(path_type=Path), default=None,
              help="Your PEM certificate (chain) for HTTPS (default: kiln's self-signed one in the state home).")
@click.option("--tls-key", "--key", "key", type=click.Path(path_type=Path), default=None,
              help="The PEM private key of --tls-cert.")
@click.option("--no-validate", is_flag=True,
              help="Builds skip the boot test, as `kiln build --no-validate` (their images are marked unverified).")
@click.option("--page-size", type=click.IntRange(1, 1000), default=None,
              help="Items in one page of a list before a nextLink (default 100).")
@click.option("--insecure-http", is_flag=True,
              help="Serve plain http (tokens travel in clear): allowed only on a loopback address.")
@click.pass_context
def serve_cmd(ctx: click.Context, host: str, port: int, workers: int, max_body: int | None, cert: Path | None,
              key: Path | None, no_validate: bool, page_size: int | None, insecure_http: bool) -> None:
    """Serve Azure VM Image Builder's REST API over HTTPS: the Azure SDK and az drive kiln unchanged.

    Without --tls-cert, kiln makes a self-signed certificate in the state home at the first start and
    prints its path and SHA-256 fingerprint: give that file to clients as their CA bundle
    (REQUESTS_CA_BUNDLE=PATH for az and the Python SDK). `kiln serve cert` shows it again.
    """
    if ctx.invoked_subcommand is not None:
        return
    app = ctx.find_object(App)
    assert app is not None
    from kiln.api.settings import (
        DEFAULT_MAX_BODY,
        DEFAULT_PAGE_SIZE,
        ServeSettings,
        is_loopback,
        local_roots,
        max_runs_per_token,
    )
    from kiln.errors import InvalidInput

    if insecure_http and not is_loopback(host):
        raise InvalidInput(f"--insecure-http is allowed only on a loopback address, not {host!r}",
                           hint="listen on 127.0.0.1 or ::1: bearer tokens would cross the network in clear")
    if insecure_http and (cert or key):
        raise InvalidInput("--insecure-http serves plain http: --tls-cert/--tls-key mean nothing with it")
    tls = None if insecure_http else _server_cert(app, host, cert, key)
    import uvicorn

    from kiln.api.app import create_app
    from kiln.api.service import Service

    settings = ServeSettings(host=host, port=port, workers=workers, max_body=max_body or DEFAULT_MAX_BODY,
                             insecure_http=insecure_http, local_roots=local_roots(app.config),
                             max_runs_per_token=max_runs_per_token(app.config), validate=not no_validate,
                             page_size=page_size or DEFAULT_PAGE_SIZE)
    service = Service(app.config, settings, monitor=make_monitor(app))
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"kiln: serving on {'http' if tls is None else 'https'}://{shown}:{port} (state home {app.config.home})",
               err=True)
    tls_args = {} if tls is None else {"ssl_certfile": str(tls.cert), "ssl_keyfile": str(tls.key)}
    try:
        uvicorn.run(create_app(service), host=host, port=port, log_level="warning", access_log=False,
                    timeout_graceful_shutdown=30, **tls_args)  # type: ignore[arg-type]
    except KeyboardInterrupt:  # uvicorn re-raises the SIGTERM/Ctrl-C it shut down on: a clean stop
        pass
    click.echo("kiln: server stopped", err=True)


def _server_cert(app: App, host: str, cert: Path | None, key: Path | None) -> ServerCert:
    from kiln.api import tls
    from kiln.errors import InvalidInput

    if (cert is None) != (key is None):
        raise InvalidInput("--tls-cert and --tls-key go together", hint="give both, or neither for kiln's own certificate")
    if cert is not None and key is not None:
        found = tls.user_cert(cert, key)
    else:
        found = tls.own_cert(app.config.home, host)
        if found.created_now:
            click.echo(f"kiln: made a self-signed TLS certificate {found.cert} (clients must trust this file)", err=True)
    click.echo(f"kiln: TLS certificate {found.cert}", err=True)
    click.echo(f"kiln: SHA-256 fingerprint {found.fingerprint}", err=True)
    return found


@serve_cmd.command("cert")
@click.option("--host", default="127.0.0.1", show_default=True, help="The address the server will listen on.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("--path", "path_only", is_flag=True, help="Print only the certificate's path.")
@pass_app
def serve_cert(app: App, host: str, as_json: bool, path_only: bool) -> None:
    """Show kiln's own TLS certificate (making it if it is not there yet): path and SHA-256 fingerprint.

    Clients trust that file: REQUESTS_CA_BUNDLE=$(kiln serve cert --path) for az and the SDK."""
    from kiln.api import tls

    found = tls.own_cert(app.config.home, host)
    if path_only:
        click.echo(str(found.cert))
    elif as_json:
        click.echo(json.dumps({"certificate": str(found.cert), "key": str(found.key),
                               "sha256Fingerprint": found.fingerprint, "createdNow": found.created_now}))
    else:
        click.echo(f"certificate  {found.cert}")
        click.echo(f"key          {found.key}")
        click.echo(f"sha256       {found.fingerprint}")


@click.group("token")
def token_group() -> None:
    """Access tokens for `kiln serve` (scoped to subscriptions, optionally read-only)."""


@token_group.command("create")
@click.argument("name")
@click.option("--subscription", "subscriptions", multiple=True,
              help="A subscription id the token may use (repeatable; default: any subscription).")
@click.option("--read-only", is_flag=True, help="GET only: no PUT, PATCH, POST or DELETE.")
@pass_app
def token_create(app: App, name: str, subscriptions: tuple[str, ...], read_only: bool) -> None:
    """Make a token; prints only the token (it is not stored, only its hash)."""
    from kiln.store.tokens import Tokens

    with open_store(app) as store:
        secret = Tokens(store.catalog).create(name, subscriptions or ("*",), read_only=read_only)
    click.echo(secret)


@token_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_app
def token_list(app: App, as_json: bool) -> None:
    from kiln.store.tokens import Tokens

    with open_store(app) as store:
        tokens = Tokens(store.catalog).list()
    emit(as_json, [t.to_json() for t in tokens],
         lambda: (("name", "subscriptions", "access"),
                  [(t.name, ",".join(t.subscriptions), "read-only" if t.read_only else "read-write") for t in tokens]))


@token_group.command("revoke")
@click.argument("name")
@pass_app
def token_revoke(app: App, name: str) -> None:
    from kiln.store.tokens import Tokens

    with open_store(app) as store:
        Tokens(store.catalog).revoke(name)
    click.echo(f"revoked {name}", err=True)


def register(cli: click.Group) -> None:
    cli.add_command(serve_cmd)
    cli.add_command(token_group)
