"""Monitors for tests: they keep what the code under test reported, so a test can assert on it."""

from __future__ import annotations

from kiln.events import Event, Monitor


class Lines(Monitor):
    """The log lines a step reported."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, event: Event) -> None:
        if event.kind == "log":
            self.lines.append(event.message)


class Recorder(Monitor):
    """Every event, in order (thread-safe: parallel jobs report to one recorder)."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)

    @property
    def text(self) -> str:
        return "\n".join(e.message for e in self.events if e.kind == "log")
