"""A worker's build process: `python -m kiln.cluster.child HOME --job FILE`.

The API's child (`kiln.api.child.job_main`: the same build, the same JSON events on stdout and
the same exit codes), plus what a cluster's shared catalog adds: a catalog that stops answering
mid-build (the PostgreSQL server stopped or restarted: its connections are gone) is not a bug
but the host's state, so it ends the build as a clear error naming the catalog (one JSON error
line on stderr, exit 1) rather than a traceback. The pipeline's cleanup has run by then (the work
directory is removed); nothing was published, as publishing is a catalog transaction that never
began or never committed. The worker records the run's end once the catalog is back
(`kiln.cluster.runner`). A catalog unreachable when the build starts is the store's own
InvalidInput ("cannot open the catalog ...", exit 2).
"""

from __future__ import annotations

import json
import sys


def main(argv: list[str]) -> int:
    from sqlalchemy import exc

    from kiln.api.child import job_main
    from kiln.errors import KilnError

    try:
        return job_main(argv)
    except KilnError as e:  # raised before the build began (the child's own handler covers the build)
        print(json.dumps({"kind": "error", "message": e.render()}), file=sys.stderr)
        return e.exit_code
    except (exc.OperationalError, exc.InterfaceError, exc.PendingRollbackError) as e:
        print(json.dumps({"kind": "error", "message": lost_catalog_message(argv[0], e)}), file=sys.stderr)
        return 1


def lost_catalog_message(home: str, e: BaseException) -> str:
    from pathlib import Path

    import sqlalchemy as sa

    from kiln.config import load_config
    from kiln.store.db import shown_url

    config = load_config(Path(home))
    where = config.cluster.catalog or str(config.catalog_path)
    shown = shown_url(where) if "://" in where else where
    cause: BaseException | None = e  # the driver's error, not SQLAlchemy's "rollback first" that followed it
    while cause is not None and not isinstance(cause, sa.exc.DBAPIError):
        cause = cause.__context__
    detail = str(getattr(cause, "orig", None) or cause or e).strip().splitlines()
    return (f"the catalog {shown} became unreachable mid-build ({detail[0] if detail else type(e).__name__}): "
            "the build stopped before publishing anything")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
