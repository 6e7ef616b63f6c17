"""A monitor for tests: keeps the log lines a step reported, so a test can assert on them."""

from __future__ import annotations

from kiln.events import Event, Monitor


class Lines(Monitor):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, event: Event) -> None:
        if event.kind == "log":
            self.lines.append(event.message)
