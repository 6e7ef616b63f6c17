"""A limit on the runs one token keeps queued or running, so one client cannot fill the build queue.

The server's config.toml sets it (default 10 per token):

    [api]
    max_queued_runs_per_token = 2

A run request (POST .../run, or a PUT whose template has `autoRun` enabled) past the limit is
refused with 429 in ARM's error shape and a `Retry-After`, before anything is queued; the Azure SDK
waits that long and tries again by itself. Counting happens under one lock with the submission,
so two requests at once cannot both take the last place. Which token started which run is kept in
memory: a restarted server has no run in progress (kiln.api.service fails them at start-up).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from kiln.api.errors import ArmError
from kiln.api.resources import Operation, Resources

RETRY_AFTER_S = 30  # a build takes minutes: asking again sooner is wasted
T = TypeVar("T")


class RunQuota:
    def __init__(self, limit: int, resources: Callable[[], Resources]) -> None:
        self.limit = limit
        self.resources = resources
        self._lock = threading.Lock()
        self._ops: dict[str, set[str]] = {}  # token name -> ids of run operations it started

    def active(self, token: str) -> int:
        """How many of the token's runs are queued or running (ended ones are forgotten here)."""
        res = self.resources()
        ops = self._ops.get(token, set())
        for op_id in list(ops):
            op = res.operation(op_id)
            if op is None or op.status != "InProgress":
                ops.discard(op_id)
        return len(ops)

    def _check(self, token: str) -> None:
        if (n := self.active(token)) >= self.limit:
            raise ArmError(429, "TooManyRequests",
                           f"the token '{token}' has {n} run(s) queued or running, this server's limit per token "
                           f"([api] max_queued_runs_per_token = {self.limit}); wait for one to end or cancel one",
                           headers={"Retry-After": str(RETRY_AFTER_S)})

    def _record(self, token: str, ops: list[Operation]) -> None:
        self._ops.setdefault(token, set()).update(op.id for op in ops if op.kind == "run")

    def run(self, token: str, start: Callable[[], Operation]) -> Operation:
        """Start a run for `token` (POST .../run), if it is within its limit."""
        with self._lock:
            self._check(token)
            op = start()
            self._record(token, [op])
            return op

    def put(self, token: str, body: dict[str, Any], new: bool, put: Callable[[], T],
            runs_of: Callable[[], list[Operation]]) -> T:
        """A PUT that may start a run (a `new` template with `autoRun`): checked and counted like POST .../run."""
        auto = isinstance(props := body.get("properties"), dict) and isinstance(props.get("autoRun"), dict) \
            and props["autoRun"].get("state") == "Enabled"
        if not (auto and new):
            return put()
        with self._lock:
            self._check(token)
            out = put()
            self._record(token, runs_of())
            return out
