"""The submitter's copy of a run built on another host: its customization.log, written from the events.

A worker writes a run's customization.log in its own state home, the path the catalog's run row
names, which the submitter's host cannot read. Every line of that log is also an event on the
run's Redis stream (`kiln.events.LogFile` writes the log from the same events), so the submitter
keeps a copy in its own state home, `runs/RUN/worker-customization.log`, written with the same
LogFile from the events it follows: the stamps and lines are the worker's. (A name of its own: a
worker may share the submitter's state home, and then writes `runs/RUN/customization.log` itself.)
A follower reads a stream from its start, so a new copy replaces an older one (a restarted
`kiln serve` follows its runs again). `kiln build` names the copy,
and the API's log stream (`GET .../runs/{runId}/log`) reads it, wherever the build ran.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

LOG_NAME = "worker-customization.log"
EARLY_EVENTS = 200  # events before the first that names its run (kept to write once it is known)


def copy_path(runs_dir: Path, run_id: str) -> Path:
    return runs_dir / run_id / LOG_NAME


class LogCopy:
    """Feed it every event of one job's stream, in order; `close()` when the job has ended."""

    def __init__(self, runs_dir: Path) -> None:
        self.runs_dir = runs_dir
        self.run_id = ""
        self._early: list[dict[str, Any]] = []
        self._file: Any = None

    @property
    def path(self) -> Path | None:
        return copy_path(self.runs_dir, self.run_id) if self.run_id else None

    def __call__(self, data: dict[str, Any]) -> None:
        from kiln.cluster.follow import to_event
        from kiln.events import LogFile

        run_id = str(data.get("run_id") or "")
        if self._file is None:
            if not run_id:
                if len(self._early) < EARLY_EVENTS:
                    self._early.append(data)
                return
            self.run_id = run_id
            path = copy_path(self.runs_dir, run_id)
            path.unlink(missing_ok=True)
            self._file = LogFile(path)
            for early in self._early:
                self._write(to_event(early))
            self._early = []
        self._write(to_event(data))

    def _write(self, event: Any) -> None:
        try:
            self._file.emit(event)
        except (TypeError, ValueError):  # not an event of this kiln's shape: the log copy skips it
            pass

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
