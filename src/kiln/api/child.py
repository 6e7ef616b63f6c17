"""One build of an API template, in a process of its own:
`python -m kiln.api.child HOME TEMPLATE_ID [--parent PID] [--no-validate]`.

The server's executor starts it as the leader of a new process group, so canceling a build is
one signal to the group: SIGTERM reaches the pipeline (which records the run Canceled and removes
its work directory, as on Ctrl-C) and every program it runs at once. Events go to stdout as JSON
lines (the same events `kiln build --progress json` prints), the first of them naming the run.
A child whose server (`--parent`) died before the build began does not begin it: the restarted
server runs that queued run again.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from kiln.events import Event, JsonMonitor


def _sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


class ServerPipe(JsonMonitor):
    """Events to the server; if the server is gone the build goes on (a restarted server stops it)."""

    def emit(self, event: Event) -> None:
        try:
            super().emit(event)
        except (BrokenPipeError, ValueError):
            pass


def main(argv: list[str]) -> int:
    from kiln import ids
    from kiln.api.resources import Resources
    from kiln.api.templates import load_body
    from kiln.config import load_config
    from kiln.pipeline.build import build
    from kiln.pipeline.context import BuildOptions
    from kiln.store.store import Store

    signal.signal(signal.SIGTERM, _sigterm)
    home, template_id = Path(argv[0]), ids.parse(argv[1], ids.IMAGE_TEMPLATE)
    parent = int(argv[argv.index("--parent") + 1]) if "--parent" in argv else None
    options = BuildOptions(validate="--no-validate" not in argv)
    config = load_config(home)
    if parent is not None and os.getppid() != parent:
        print("the kiln server that started this build is gone", file=sys.stderr)
        return 3
    with Store.open(config) as store:
        resource = Resources(store.catalog).get(template_id)
        if resource is None:
            print(f"image template {template_id} is gone", file=sys.stderr)
            return 2
        def one() -> None:
            build(load_body(resource.body, template_id, config), config=config, store=store,
                  monitor=ServerPipe(sys.stdout), options=options, template_id=template_id)

        return _exit_code(one)


def job_main(argv: list[str]) -> int:
    """A cluster worker's build: `python -m kiln.api.child HOME --job FILE` (a kiln.cluster BuildRequest)."""
    from kiln.cluster.engine import BuildRequest
    from kiln.config import load_config
    from kiln.pipeline.build import build
    from kiln.store.store import Store

    signal.signal(signal.SIGTERM, _sigterm)
    config, request = load_config(Path(argv[0])), BuildRequest.read(Path(argv[2]))
    if request.kind == "api":
        return main([str(config.home), request.template_id])
    with Store.open(config) as store:
        def one() -> None:
            from kiln.cluster.jobfiles import unpack

            job_config = unpack(config, request.files)  # the submitter's local files, from the shared blob store
            template, options = request.load_document(job_config)
            build(template, config=job_config, store=store, monitor=ServerPipe(sys.stdout), options=options)

        return _exit_code(one)


def _exit_code(build_one: Callable[[], None]) -> int:
    """Run one build; a user's mistake or a failed build is its exit code and one JSON line on stderr."""
    from kiln.errors import KilnError

    try:
        build_one()
    except KilnError as e:
        print(json.dumps({"kind": "error", "message": e.render()}), file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(job_main(sys.argv[1:]) if sys.argv[2:3] == ["--job"] else main(sys.argv[1:]))
