"""`kiln serve` (the AIB REST API, kiln.api) and `kiln token` (its access tokens)."""

from __future__ import annotations

import click

from kiln.cli import App, pass_app
from kiln.cli.common import emit, make_monitor, open_store


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8443, show_default=True)
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True, help="Builds at a time.")
@click.option("--max-body", type=click.IntRange(1024), default=None, help="Largest request body, in bytes (default 4 MiB).")
@click.option("--insecure-http", is_flag=True,
              help="Serve plain http (tokens travel in clear): allowed only on a loopback address.")
@pass_app
def serve_cmd(app: App, host: str, port: int, workers: int, max_body: int | None, insecure_http: bool) -> None:
    """Serve Azure VM Image Builder's REST API: the Azure SDK and tools drive kiln unchanged."""
    from kiln.api.settings import DEFAULT_MAX_BODY, ServeSettings, is_loopback, local_roots
    from kiln.errors import InvalidInput

    if not insecure_http:
        raise InvalidInput("kiln serve has no TLS yet: it can only serve plain http on a loopback address",
                           hint="add --insecure-http and listen on 127.0.0.1 (the default --host)")
    if not is_loopback(host):
        raise InvalidInput(f"--insecure-http is allowed only on a loopback address, not {host!r}",
                           hint="listen on 127.0.0.1 or ::1: bearer tokens would cross the network in clear")
    import uvicorn

    from kiln.api.app import create_app
    from kiln.api.service import Service

    settings = ServeSettings(host=host, port=port, workers=workers, max_body=max_body or DEFAULT_MAX_BODY,
                             insecure_http=insecure_http, local_roots=local_roots(app.config))
    service = Service(app.config, settings, monitor=make_monitor(app))
    click.echo(f"kiln: serving on http://{host}:{port} (state home {app.config.home})", err=True)
    try:
        uvicorn.run(create_app(service), host=host, port=port, log_level="warning", access_log=False,
                    timeout_graceful_shutdown=30)
    except KeyboardInterrupt:  # uvicorn re-raises the SIGTERM/Ctrl-C it shut down on: a clean stop
        pass
    click.echo("kiln: server stopped", err=True)


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
