"""A golden image's build as a cluster job: the request the submitter enqueues, the template a worker builds.

With `[cluster] queue` configured, `kiln factory build` (and `kiln factory run`) enqueue one job
per golden image instead of building in place (`build.build_golden_images`). The job carries
what names the build, not the build itself: the factory's configuration folder, the golden
image's ImagePath, the staging image id and the factory lab's name and region. The worker reads
the folder again (`load_factory`, as the submitter did) and builds the same `factory_template`,
so a DevTest Labs formula and its artifacts are compiled on the worker exactly as here. The
folder must therefore be readable at the same path on every worker (a shared path, as the
catalog and blobs are shared). The build publishes the staging image into the shared catalog,
where the submitter reads it back and saves it as a local build's.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Final

from kiln.cluster.engine import BuildRequest
from kiln.cluster.routing import requirements
from kiln.errors import InvalidInput

if TYPE_CHECKING:
    from kiln.config import Config
    from kiln.factory.config import Factory, GoldenImage
    from kiln.ids import ResourceId
    from kiln.pipeline.context import BuildOptions
    from kiln.store.labs import Lab
    from kiln.template.model import ImageTemplate

KIND: Final = "factory"


def golden_request(factory: Factory, golden: GoldenImage, lab: Lab, image_id: ResourceId,
                   options: BuildOptions) -> BuildRequest:
    requires, host = requirements(golden.template.tags, file=str(golden.file))
    where = {"imagePath": golden.image_path, "imageId": str(image_id), "labName": lab.id.name,
             "location": lab.location, "artifactRepos": json.dumps([str(p.absolute()) for p in factory.artifact_repos])}
    return BuildRequest(KIND, golden.template.name, file=str(factory.root.absolute()), parameters=where,
                        validate=options.validate, boot_timeout_s=options.boot_timeout_s, keep_work=options.keep_work,
                        timeout_minutes=golden.template.timeout_minutes, requires=requires, host=host)


def load_request(request: BuildRequest, config: Config) -> tuple[ImageTemplate, BuildOptions]:
    """On the worker: the golden image's factory template and options, as the submitter would build them."""
    from kiln import ids
    from kiln.factory.build import factory_template
    from kiln.factory.config import load_factory
    from kiln.pipeline.context import BuildOptions

    p = request.parameters
    repos = tuple(Path(r) for r in json.loads(p.get("artifactRepos", "[]")))
    factory = load_factory(Path(request.file), config, artifact_repos=repos, lab_name=p["labName"],
                           location=p["location"])
    golden = next((g for g in factory.golden_images if g.image_path == p["imagePath"]), None)
    if golden is None:
        raise InvalidInput(f"{request.file}: the golden image {p['imagePath']} is gone from the factory's folder",
                           hint="the folder changed after the build was queued: run kiln factory build again")
    image_id = ids.parse(p["imageId"], ids.IMAGE)
    options = BuildOptions(validate=request.validate, boot_timeout_s=request.boot_timeout_s,
                           keep_work=request.keep_work)
    # A Specialized golden image is an exact copy: it is not deprovisioned (as in a local factory build).
    options = dataclasses.replace(options, generalize=golden.os_state != "Specialized")
    return factory_template(golden, p["location"], image_id), options
