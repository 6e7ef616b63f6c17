"""AIB's SourceImage triggers: when a template's source gets newer, a run of the template starts.

What "newer" means depends on the source (AIB's own triggers know only the first):

- SharedImageVersion naming `.../versions/latest` (or the definition): the definition's latest
  version is higher than the one last seen;
- ManagedImage: the image was replaced (its bytes differ from the ones last seen);
- PlatformImage with version `latest`: the apt mirror's Release file resolves to a higher exact
  version (e.g. 12.15.20260711 after 12.14.20260510): the mirror changed.

A source pinned to one version can never get newer, so a trigger on it is refused. Creating a
trigger records what the source is then; it fires only on a change after that.

`check` looks at every trigger now (`kiln trigger check`, and `kiln serve` on a schedule: every
`[triggers] interval_s` seconds of config.toml, default 300) and records, for each source that got
newer, the reason of the run it asks for. Runs of API templates are the server's to execute (its
worker pool), so `start_pending` (the server, every second) starts what was asked for: a request
survives until a server has started it, and one made while the template's run is in progress waits
for that run to end.
"""

from __future__ import annotations

import datetime
import logging
import tomllib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kiln import ids
from kiln.config import Config
from kiln.errors import InvalidInput, KilnError
from kiln.ids import ResourceId
from kiln.store.triggers import Trigger, Triggers
from kiln.template.model import ManagedImageSource, PlatformImageSource, SharedImageVersionSource, Source

if TYPE_CHECKING:
    from kiln.api.service import Service
    from kiln.store.store import Store

log = logging.getLogger("kiln.triggers")

DEFAULT_INTERVAL_S = 300.0
HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"


@dataclass(frozen=True)
class SourceState:
    seen: str  # what is stored and compared: a version, a digest, an exact version
    what: str  # how a status message names it


@dataclass(frozen=True)
class Outcome:
    trigger: Trigger
    status_code: str
    message: str
    fired: str = ""  # the reason of the run asked for, if the source got newer


def interval_s(config: Config) -> float:
    """`[triggers] interval_s` of config.toml: how often `kiln serve` checks every trigger."""
    path = config.home / "config.toml"
    data = tomllib.loads(path.read_text()) if path.is_file() else {}
    value = data.get("triggers", {}).get("interval_s", DEFAULT_INTERVAL_S)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 1:
        raise InvalidInput("[triggers] interval_s must be a number of seconds, at least 1", file=str(path))
    return float(value)


def unsupported(source: Source) -> str:
    """Why a SourceImage trigger on `source` could never fire ('' if it can)."""
    if isinstance(source, SharedImageVersionSource):
        rid = ids.try_parse(source.image_version_id)
        if rid is not None and rid.kind.lower() == ids.GALLERY_IMAGE_VERSION.lower() and rid.name.lower() != "latest":
            return (f"the source is pinned to version {rid.name} of its image definition, which never changes; "
                    "name .../versions/latest as the source for a trigger")
        return ""
    if isinstance(source, ManagedImageSource):
        return ""
    if isinstance(source, PlatformImageSource):
        if source.version.lower() != "latest":
            return f"the source is pinned to platform image version {source.version}; use version 'latest' for a trigger"
        return ""
    return f"a {source.type} source has no versions for a trigger to follow"


def source_state(store: Store, config: Config, source: Source) -> SourceState:
    """What the source is now (raises KilnError if it cannot be resolved: missing, mirror down)."""
    if isinstance(source, SharedImageVersionSource):
        v = store.galleries.resolve_version(source.image_version_id)
        return SourceState(v.version, f"version {v.version} of {v.definition_id}")
    if isinstance(source, ManagedImageSource):
        image = store.images.get(source.image_id)
        return SourceState(image.digest, f"managed image {image.id} (content {image.digest[:12]})")
    if isinstance(source, PlatformImageSource):
        from kiln.sources.mirror import fetch_release
        from kiln.sources.platform import recipe_for

        recipe = recipe_for(source, config)
        exact = fetch_release(recipe.mirror, recipe.suite).exact_version
        return SourceState(exact, f"platform image {source.publisher}:{source.offer}:{source.sku} {exact}")
    raise InvalidInput(unsupported(source))


def newer(source: Source, was: str, now: str) -> bool:
    if not was:
        return bool(now)  # nothing was there when the trigger was made: the first one counts
    if isinstance(source, ManagedImageSource):
        return now != was  # replaced
    return _numbers(now) > _numbers(was)


def _reason(source: Source, was: str, state: SourceState) -> str:
    if not was:
        return f"source image appeared: {state.what}"
    if isinstance(source, ManagedImageSource):
        return f"source image replaced: {state.what}, was content {was[:12]}"
    return f"new source image version: {state.what}, newer than {was}"


def _numbers(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".") if p.isdigit())


def template_source(store: Store, config: Config, template: ResourceId, *, since: float = 0.0) -> Source | None:
    """The source of an API template (None if the template is gone, or was made anew after `since`)."""
    from kiln.api.resources import Resources
    from kiln.api.templates import load_body

    rec = Resources(store.catalog).get(template)
    if rec is None or rec.created > since > 0:
        return None
    return load_body(rec.body, rec.id, config).source


def initial_state(store: Store, config: Config, source: Source) -> tuple[str, str, str]:
    """(seen, status code, message) for a trigger created now."""
    try:
        state = source_state(store, config, source)
    except KilnError as e:
        return "", UNHEALTHY, f"the source cannot be resolved now: {e.message}; the first version that appears starts a run"
    return state.seen, HEALTHY, f"watching {state.what}"


def check(store: Store, config: Config) -> list[Outcome]:
    """Check every trigger now; record (and return) what each saw and the runs that are due."""
    triggers = Triggers(store.catalog)
    outcomes = []
    for t in triggers.list():
        try:
            source = template_source(store, config, t.template_id, since=t.created)
        except KilnError as e:  # a template that no longer loads (kiln's rules changed since it was made)
            message = f"its image template does not load: {e.message}"
            triggers.set_status(t.id, UNHEALTHY, message)
            outcomes.append(Outcome(t, UNHEALTHY, message))
            continue
        if source is None:  # the template went: so did its triggers
            triggers.delete(t.id)
            continue
        try:
            state = source_state(store, config, source)
        except KilnError as e:
            message = f"the source cannot be resolved: {e.message}"
            triggers.set_status(t.id, UNHEALTHY, message)
            outcomes.append(Outcome(t, UNHEALTHY, message))
            continue
        if not newer(source, t.seen, state.seen):
            if state.seen == t.seen and t.status_code == HEALTHY:  # nothing changed: its status stands
                outcomes.append(Outcome(t, HEALTHY, t.status_message))
                continue
            message = t.status_message if t.pending else f"watching {state.what}"
            if triggers.observe(t.id, t.seen, state.seen, status_code=HEALTHY, status_message=message):
                outcomes.append(Outcome(t, HEALTHY, message))
            continue
        fired = f"{_reason(source, t.seen, state)}, seen at {_iso_now()}"
        message = f"a run was asked for: {fired}"
        if triggers.observe(t.id, t.seen, state.seen, status_code=HEALTHY, status_message=message, fire=fired):
            outcomes.append(Outcome(t, HEALTHY, message, fired))
    return outcomes


def start_pending(service: Service) -> list[tuple[Trigger, str]]:
    """Start the runs triggers asked for (the server's side); returns (trigger, operation id) started."""
    from kiln.api.errors import ArmError

    store = service.store()
    triggers = Triggers(store.catalog)
    started = []
    for t in triggers.pending():
        rec = service.resources().get(t.template_id)
        if rec is None or rec.created > t.created:  # the template went (or was made anew): so did its triggers
            triggers.delete(t.id)
            continue
        try:
            op = service.run(t.template_id)
        except ArmError as e:
            if e.status == 409:  # a run is in progress: this one starts when it has ended
                code, message = HEALTHY, f"a run was asked for ({t.pending}); it waits for the run in progress"
            else:
                code, message = UNHEALTHY, f"the run asked for could not start: {e.message}"
            if (code, message) != (t.status_code, t.status_message):  # asked every second: written once
                triggers.set_status(t.id, code, message)
            continue
        triggers.started(t.id, t.pending, op.id, f"{t.pending}; a run started at {_iso_now()} (operation {op.id})")
        started.append((t, op.id))
    return started


def _iso_now() -> str:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
