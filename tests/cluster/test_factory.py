"""`kiln factory run` with a cluster queue: one job per golden image on two `kiln worker`s.

A factory of 4 golden images (each Debian 12 from the test cache's root with its own marker file,
boot-tested by its build: the in-VM validation reads the marker in the booted guest) and 4 labs
selecting different subsets is submitted once. Both workers build, every lab gets exactly what its
ImagePaths select, and the catalog ends as a single-host run of the same factory (`--local`, in a
state home of its own, run at the same time) leaves it, apart from run metadata.
Both runs boot-test their images: kiln gives a lab only boot-tested images, so a single-host run
without its boot tests would leave every lab empty.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from clusterlib import Cluster, kiln

from kiln.factory.names import base_name

pytestmark = pytest.mark.integration

SUB = "11111111-0000-0000-0000-000000000001"
GOLDEN = {"Base/a.json": "a", "Base/b.json": "b", "Apps/c.json": "c", "Apps/d.json": "d"}
LABS = {"LabAll": ["Base", "Apps"], "LabBase": ["Base"], "LabC": ["Apps/c.json"], "LabMixed": ["Base/a.json", "Apps\\d.json"]}
SELECTED = {"LabAll": set(GOLDEN), "LabBase": {"Base/a.json", "Base/b.json"}, "LabC": {"Apps/c.json"},
            "LabMixed": {"Base/a.json", "Apps/d.json"}}
BOOT_TIMEOUT = "2400"  # TCG on a shared 2-core machine, two boots at once beside other tests


def lab_id(name: str) -> str:
    return f"/subscriptions/{SUB}/resourceGroups/labs-rg/providers/Microsoft.DevTestLab/labs/{name}"


def golden(marker: str) -> dict:
    return {
        "type": "Microsoft.VirtualMachineImages/imageTemplates", "apiVersion": "2022-02-14", "location": "westus2",
        "tags": {"description": f"golden {marker}"},
        "properties": {
            "vmProfile": {"osDiskSizeGB": 4},
            "source": {"type": "PlatformImage", "publisher": "Debian", "offer": "debian-12", "sku": "12-gen2",
                       "version": "latest"},
            "customize": [{"type": "Shell", "name": "marker",
                           "inline": ["mkdir -p /etc/kiln", f"echo {marker} > /etc/kiln/golden"]}],
            "validate": {"inVMValidations": [{"type": "Shell", "name": "marker-in-guest",
                                              "inline": [f"test \"$(cat /etc/kiln/golden)\" = {marker}"]}]},
            "distribute": [{"type": "ManagedImage", "runOutputName": marker, "location": "westus2",
                            "imageId": f"/subscriptions/{SUB}/resourceGroups/golden/providers/Microsoft.Compute/"
                                       f"images/{marker}"}]}}


def factory_dir(root: Path) -> Path:
    for path, marker in GOLDEN.items():
        f = root / "GoldenImages" / path
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(golden(marker), indent=2))
    labs = [{"SubscriptionId": SUB, "ResourceGroup": "labs-rg", "LabName": name, "ImagePaths": paths}
            for name, paths in LABS.items()]
    (root / "Labs.json").write_text(json.dumps({"Labs": labs}, indent=2))
    return root


def factory_run(home: Path, config: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "kiln", "--home", str(home), "factory", "run", str(config),
                             "--max-concurrent-builds", "4", "--create-labs-in", "westus2", "--images-to-save", "1",
                             "--boot-timeout", BOOT_TIMEOUT, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))


def single_host_home(root: Path, c: Cluster) -> Path:
    """A state home of its own (catalog, blobs, region folder of the same name) that knows the queue:
    `--local` is what keeps its builds on this host."""
    home = root / "single-host"
    (home / "cache").mkdir(parents=True)
    (home / "cache" / "roots").symlink_to(c.roots_cache)
    (home / "config.toml").write_text(f'[cluster]\nqueue = "{c.redis.url}"\n'
                                      f'[regions.westus2]\npath = "{root / "single-host-westus2"}"\n')
    return home


def catalog(home: Path) -> dict:
    """What a user sees of the factory's outcome, without run metadata (ids, times, digests, paths)."""
    labs = json.loads(kiln(home, "lab", "list", "--json").stdout)
    out: dict = {"labs": sorted((lab["name"], lab["location"], lab["kiln"]["customImages"]) for lab in labs),
                 "images": sorted((i["name"], i["location"], json.dumps(i.get("tags", {}), sort_keys=True))
                              for i in json.loads(kiln(home, "image", "list", "--json").stdout)),
                  "labImages": {}}
    for lab in labs:
        images = json.loads(kiln(home, "lab", "image", "list", lab["id"], "--json").stdout)
        out["labImages"][lab["name"]] = sorted(
            (i["name"], i["tags"].get("ImagePath", ""), json.dumps(i["tags"], sort_keys=True), i["location"],
             i["properties"]["osState"], i["properties"]["description"], i["kiln"]["bootTested"]) for i in images)
    runs = json.loads(kiln(home, "runs", "list", "--json").stdout)
    out["runs"] = sorted((r["templateId"].rsplit("/", 1)[-1], r["lastRunStatus"]["runState"],
                          tuple(o["name"] for o in r["runOutputs"])) for r in runs)
    return out


@pytest.fixture(scope="module")
def runs(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> dict:
    from scratch import discard_if_passed

    cluster.start_worker("w1")
    cluster.start_worker("w2")
    root = tmp_path_factory.mktemp("factoryq")
    discard_if_passed(request, root)
    config = factory_dir(root / "Configuration")
    single = single_host_home(root, cluster)
    queued, local = factory_run(cluster.submitter, config), factory_run(single, config, "--local")
    q_out, q_err = queued.communicate(timeout=7200)
    l_out, l_err = local.communicate(timeout=7200)
    return {"cluster": cluster, "single": single, "queued": (queued.returncode, q_out, q_err),
            "local": (local.returncode, l_out, l_err)}


def test_the_factory_runs_through_the_queue_and_both_workers_build(runs: dict) -> None:
    code, out, err = runs["queued"]
    assert code == 0, out + err
    assert "▶ customize[0]: marker (Shell)" in err and "✔ assemble" in err  # the workers' step lines, here
    assert out.count("built ") == len(GOLDEN) and out.count("saved ") == len(GOLDEN), out
    c: Cluster = runs["cluster"]
    took = {w.name: w.runs() for w in c.workers.values()}
    assert all(took.values()), took  # both workers built at least one image
    ran = [r for rs in took.values() for r in rs]
    # One job per golden image, each run once (and none of the `--local` run's builds: its home knows the queue too).
    assert sorted(r[1] for r in ran) == sorted(base_name(p) for p in GOLDEN), took
    assert {r[2] for r in ran} == {"Succeeded"}, took


def test_every_lab_holds_exactly_what_its_image_paths_select_each_boot_tested(runs: dict) -> None:
    c: Cluster = runs["cluster"]
    for name, paths in SELECTED.items():
        images = json.loads(kiln(c.submitter, "lab", "image", "list", lab_id(name), "--json").stdout)
        assert sorted(i["tags"]["ImagePath"] for i in images) == sorted(paths), name
        for image in images:
            # The build's boot test booted this image and read its own marker in the guest.
            assert image["kiln"]["bootTested"] is True, image["id"]
            assert Path(image["kiln"]["path"]).exists()


def test_the_catalog_matches_a_single_host_run_of_the_same_factory(runs: dict) -> None:
    code, out, err = runs["local"]
    assert code == 0, out + err
    runs_here = json.loads(kiln(runs["single"], "runs", "list", "--json").stdout)
    assert len(runs_here) == len(GOLDEN)
    assert all(Path(r["logPath"]).is_relative_to(runs["single"]) for r in runs_here)  # --local built in place
    queued, single = catalog(runs["cluster"].submitter), catalog(runs["single"])
    assert queued["labImages"] and queued == single
