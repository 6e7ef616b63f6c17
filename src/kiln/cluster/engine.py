"""The job engine as kiln sees it: enqueue a build, cancel a run, list workers, queues and runs.

Everything else in kiln (the CLI, the API's executor) talks to this Protocol, so another engine
can replace RQ without touching them. `BuildRequest` is the one payload a job carries: plain
JSON, so any engine can store it and any worker can read it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from kiln.config import Config
    from kiln.pipeline.context import BuildOptions
    from kiln.template.model import ImageTemplate


@dataclass(frozen=True)
class BuildRequest:
    """One build to run somewhere: an API template by id, or a template document as `kiln build` read it."""

    kind: Literal["api", "document", "factory"]  # factory: a golden image (kiln.factory.queued)
    name: str  # the template's name, for the worker's one line per run
    template_id: str = ""  # api: the image template resource in the shared catalog
    document: Any = None  # document: the parsed JSON file
    file: str = ""  # document: where it was read (absolute; error messages, relative paths)
    parameters: dict[str, str] = field(default_factory=dict)
    index: int = 0  # document: which image template of the file
    validate: bool = True
    boot_timeout_s: float = 300.0
    keep_work: bool = False
    timeout_minutes: int = 240  # buildTimeoutInMinutes (or its default): the worker's job timeout
    requires: tuple[str, ...] = ()  # capabilities the template asks for (routing.requirements)
    host: str = ""  # a worker name the template is pinned to ("" = any)
    retries: int | None = None  # kiln.retries (0|1); None: the engine's default ([cluster] retries) at enqueue
    attempt: int = 1  # 2: the retry of a build whose worker was lost (see state.lose)
    build: str = ""  # a retry: the first attempt's job id, which keys the build's stream, cancel and in-flight entry
    files: dict[str, str] = field(default_factory=dict)  # document: its local files (kiln.cluster.jobfiles)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["requires"] = list(self.requires)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BuildRequest:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["requires"] = tuple(known.get("requires", ()))
        return cls(**known)

    @classmethod
    def read(cls, path: Path) -> BuildRequest:
        return cls.from_json(json.loads(path.read_text()))

    def load_document(self, config: Config) -> tuple[ImageTemplate, BuildOptions]:
        """A `document` request's template and options, loaded on the worker as `kiln build` loads them."""
        from kiln.pipeline.context import BuildOptions
        from kiln.template.load import load_template_data

        if self.kind == "factory":
            from kiln.factory.queued import load_request

            return load_request(self, config)

        templates = load_template_data(self.document, file=self.file, parameters=self.parameters, config=config)
        options = BuildOptions(validate=self.validate, boot_timeout_s=self.boot_timeout_s, keep_work=self.keep_work)
        return templates[self.index], options


@dataclass(frozen=True)
class WorkerInfo:
    name: str
    capabilities: dict[str, Any]
    queues: tuple[str, ...]
    current_job: str
    current_run: str
    last_heartbeat: float
    lost_after_s: float  # its heartbeat is this old: the worker is lost
    alive: bool


@dataclass(frozen=True)
class QueueInfo:
    name: str
    queued: int
    started: int


@dataclass(frozen=True)
class RunInFlight:
    job_id: str  # the build's job id (the first attempt's: its stream's key)
    run_id: str  # "" until the child created the run
    template: str
    worker: str
    started: float
    attempt: int = 1
    attempts: int = 1  # 1 + the build's retries
    rq_job: str = ""  # the engine's job running this attempt ("" = job_id)


class JobEngine(Protocol):
    def enqueue(self, request: BuildRequest, job_id: str | None = None) -> str:
        """Queue a build; returns its job id (the key of its event stream). With `job_id`, once only:
        a job of that id already there is followed, not queued again."""
        ...

    def cancel(self, job_or_run_id: str) -> bool:
        """Cancel a queued or running build, on whatever host; False if there is no such build in flight."""
        ...

    def workers(self) -> list[WorkerInfo]: ...

    def queues(self) -> list[QueueInfo]: ...

    def in_flight(self) -> list[RunInFlight]: ...
