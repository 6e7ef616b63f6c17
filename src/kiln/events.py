"""Progress as events, not prints.

Every long piece of work reports to a `Monitor`: `begin` a run, `step` when a stage starts,
`log` lines of output, `progress` for countable work, `result` when a stage ends, `finish` with the
run's outcome. Renderers turn events into text for a person (step lines with timings) or into JSON
lines for a machine; a `LogFile` monitor writes the run's customization.log. `Monitors` fans one
stream of events out to several of them. The CLI and (later) an API see the same events.

Every event of a build carries its `run_id` and its `step_id` (the step it belongs to:
`source`, `customize[0]`, `validate`, ...), stamped by the `RunMonitor` each run wraps around the
monitor it is given: runs that share one monitor (a factory building in parallel) stay apart.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO


@dataclass(frozen=True)
class Event:
    kind: str  # begin | step | log | progress | result | finish
    name: str = ""
    message: str = ""
    done: int = 0
    total: int = 0
    ok: bool = True
    seconds: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)
    run_id: str = ""  # the run this event belongs to ("" outside a run)
    step_id: str = ""  # the step within the run: a step's name; for a log line, the innermost step open


class Monitor:
    """Base monitor: ignores everything. Subclasses override `emit`."""

    def __init__(self) -> None:
        self._started: dict[str, float] = {}
        self._lock = threading.Lock()

    def emit(self, event: Event) -> None:  # pragma: no cover - overridden
        pass

    def begin(self, name: str, message: str = "", **data: Any) -> None:
        self._started[name] = time.monotonic()
        self.emit(Event("begin", name, message, data=data))

    def step(self, name: str, message: str = "", **data: Any) -> None:
        self._started[name] = time.monotonic()
        self.emit(Event("step", name, message, data=data))

    def log(self, message: str, name: str = "") -> None:
        self.emit(Event("log", name, message))

    def progress(self, name: str, done: int, total: int, message: str = "") -> None:
        self.emit(Event("progress", name, message, done=done, total=total))

    def result(self, name: str, ok: bool = True, message: str = "", **data: Any) -> None:
        elapsed = time.monotonic() - self._started.pop(name, time.monotonic())
        self.emit(Event("result", name, message, ok=ok, seconds=elapsed, data=data))

    def finish(self, name: str, ok: bool = True, message: str = "", **data: Any) -> None:
        elapsed = time.monotonic() - self._started.pop(name, time.monotonic())
        self.emit(Event("finish", name, message, ok=ok, seconds=elapsed, data=data))


class NullMonitor(Monitor):
    pass


class TextMonitor(Monitor):
    """Step lines with timings for a person; log lines only when verbose."""

    def __init__(self, stream: TextIO | None = None, verbose: bool = False) -> None:
        super().__init__()
        self.stream = stream or sys.stderr
        self.verbose = verbose
        self._t0 = time.monotonic()

    def emit(self, event: Event) -> None:
        stamp = f"[{time.monotonic() - self._t0:7.1f}s]"
        if event.kind in ("begin", "step"):
            line = f"{stamp} ▶ {event.name}" + (f": {event.message}" if event.message else "")
        elif event.kind in ("result", "finish"):
            mark = "✔" if event.ok else "✘"
            line = f"{stamp} {mark} {event.name} ({event.seconds:.1f}s)" + (f": {event.message}" if event.message else "")
        elif event.kind == "progress":
            line = f"{stamp}   {event.name} {event.done}/{event.total}" + (f" {event.message}" if event.message else "")
        elif self.verbose:
            line = f"{stamp}   {event.message}"
        else:
            return
        with self._lock:
            print(line, file=self.stream, flush=True)


class JsonMonitor(Monitor):
    """One JSON object per event per line, for machines."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__()
        self.stream = stream or sys.stdout

    def emit(self, event: Event) -> None:
        with self._lock:
            self.stream.write(json.dumps(asdict(event), default=str) + "\n")
            self.stream.flush()


class LogFile(Monitor):
    """Writes every event, log lines included, to a file (a run's customization.log)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = path.open("a", encoding="utf-8")

    def emit(self, event: Event) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(event.time))
        if event.kind == "log":
            text = event.message
        elif event.kind in ("result", "finish"):
            text = f"[{event.kind}] {event.name} ok={event.ok} {event.seconds:.1f}s {event.message}"
        else:
            text = f"[{event.kind}] {event.name} {event.message}"
        with self._lock:
            try:
                self._fh.write(f"{stamp} {text.rstrip()}\n")
                self._fh.flush()
            except OSError:  # a full disk: the line is lost, but the run goes on to fail (or not) on its own
                pass

    def close(self) -> None:
        try:
            self._fh.close()
        except OSError:
            pass


class RunMonitor(Monitor):
    """One run's view of a monitor: stamps every event with the run's id and its step's id.

    Steps nest (`customize` holds `customize[0]`, `customize[1]`); a log line belongs to the
    innermost step open when it is emitted (its own name is only a label, such as a customizer's
    name), or to the name it gives when no step is open.
    """

    def __init__(self, inner: Monitor, run_id: str) -> None:
        super().__init__()
        self.inner = inner
        self.run_id = run_id
        self._open: list[str] = []

    @property
    def current_step(self) -> str:
        return self._open[-1] if self._open else ""

    def emit(self, event: Event) -> None:
        with self._lock:
            if event.kind == "step":
                self._open.append(event.name)
                step_id = event.name
            elif event.kind == "result":
                if event.name in self._open:  # close it and anything left open inside it
                    del self._open[self._open.index(event.name):]
                step_id = event.name
            elif event.kind == "log":  # its name is a label (a customizer's own name), not a step
                step_id = self.current_step or event.name
            else:
                step_id = event.name
        self.inner.emit(replace(event, run_id=self.run_id, step_id=step_id))


class Monitors(Monitor):
    """Sends every event to each of several monitors."""

    def __init__(self, *monitors: Monitor) -> None:
        super().__init__()
        self.monitors = list(monitors)

    def emit(self, event: Event) -> None:
        for m in self.monitors:
            m.emit(event)
