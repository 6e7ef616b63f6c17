"""`[cluster] queue` and routing: a bad URL or an unreachable Redis is the user's error (exit 2, no
traceback, nothing written), and a template's `kiln.requires` picks the queues that may run it."""

from __future__ import annotations

from pathlib import Path

import pytest
from clusterlib import free_port, kiln, template

from kiln.cluster.routing import queue_for, queues_for, requirements
from kiln.config import load_config
from kiln.errors import InvalidInput


def home_with(tmp_path: Path, cluster: str) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(f"[cluster]\n{cluster}\n")
    return home


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "redis://:secret@redis.internal:6380", "rediss://10.0.0.5/2",
                                 "unix:///run/redis/redis.sock"])
def test_good_queue_urls_are_kept(tmp_path: Path, url: str) -> None:
    config = load_config(home_with(tmp_path, f'queue = "{url}"'))
    assert config.cluster.queue == url
    assert config.cluster.blobs is None


def test_queue_and_blobs_together(tmp_path: Path) -> None:
    config = load_config(home_with(tmp_path, 'queue = "redis://127.0.0.1:1/0"\nblobs = "file:///srv/blobs"'))
    assert config.cluster.queue == "redis://127.0.0.1:1/0"
    assert config.cluster.blobs is not None and config.cluster.blobs.path == "/srv/blobs"


@pytest.mark.parametrize(("value", "why"), [
    ('"http://127.0.0.1:6379"', "unknown scheme http://"),
    ('"127.0.0.1:6379"', "unknown scheme"),
    ('"redis://:6379/0"', "the host is missing"),
    ('"redis://127.0.0.1:port/0"', "the port is not a number"),
    ('"redis://127.0.0.1:6379/zero"', "the database 'zero' is not a number"),
    ('"unix://relative.sock"', "absolute path"),
    ("6379", "must be a string"),
])
def test_bad_queue_urls_name_the_file_and_key(tmp_path: Path, value: str, why: str) -> None:
    home = home_with(tmp_path, f"queue = {value}")
    with pytest.raises(InvalidInput) as e:
        load_config(home)
    assert why in e.value.message
    assert e.value.path == "cluster.queue" and e.value.file == str(home / "config.toml")
    assert "redis://" in e.value.hint


def test_kiln_build_with_a_bad_queue_url_exits_2(tmp_path: Path) -> None:
    home = home_with(tmp_path, 'queue = "http://127.0.0.1:6379"')
    p = kiln(home, "build", str(template(tmp_path / "t.json", "t")), check=False)
    assert p.returncode == 2
    assert "cluster.queue" in p.stderr and "config.toml" in p.stderr and "hint:" in p.stderr
    assert "Traceback" not in p.stderr


def test_unreachable_redis_exits_2_and_changes_nothing(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    home = home_with(tmp_path, f'queue = "{url}"')
    t = template(tmp_path / "t.json", "t")
    for args in (("build", str(t)), ("cluster", "status"), ("worker", "--name", "x"), ("cluster", "cancel", "abc")):
        p = kiln(home, *args, check=False)
        assert p.returncode == 2, (args, p.stderr)
        assert f"cannot reach the cluster queue {url}" in p.stderr and "--local" in p.stderr
        assert "Traceback" not in p.stderr
    assert sorted(q.name for q in home.iterdir()) == ["config.toml"]  # no catalog, no work dirs


def test_kiln_worker_without_a_queue_says_how_to_configure_one(tmp_path: Path) -> None:
    home = tmp_path / "home"
    p = kiln(home, "worker", check=False)
    assert p.returncode == 2 and "no cluster queue is configured" in p.stderr and "[cluster] queue" in p.stderr


def test_a_template_asks_for_capabilities_with_its_tag() -> None:
    assert requirements({}) == ((), "")
    assert requirements({"kiln.requires": "KVM, x86_64"}) == (("kvm", "x86_64"), "")
    assert requirements({"kiln.host": "builder-7"}) == ((), "builder-7")
    assert queue_for(()) == "kiln.build.any"
    assert queue_for(("x86_64", "kvm")) == "kiln.build.kvm.x86_64"
    assert queue_for(("kvm",), "builder-7") == "kiln.host.builder-7"
    with pytest.raises(InvalidInput, match="no kiln worker offers"):
        requirements({"kiln.requires": "gpu"}, file="t.json")
    with pytest.raises(InvalidInput, match="no host is both"):
        requirements({"kiln.requires": "kvm,tcg"})


def test_a_worker_serves_every_queue_its_capabilities_cover() -> None:
    tcg = queues_for({"accel": "tcg", "arch": "x86_64"}, "a")
    assert tcg[0] == "kiln.host.a"
    assert set(tcg) == {"kiln.host.a", "kiln.build.tcg.x86_64", "kiln.build.tcg", "kiln.build.x86_64", "kiln.build.any"}
    assert "kiln.build.kvm" not in tcg  # a TCG host never takes a build that needs KVM
    kvm = queues_for({"accel": "kvm", "arch": "x86_64"}, "b")
    assert queue_for(requirements({"kiln.requires": "kvm"})[0]) in kvm


def test_kiln_build_with_an_unknown_requirement_exits_2(tmp_path: Path) -> None:
    home = home_with(tmp_path, f'queue = "redis://127.0.0.1:{free_port()}/0"')
    t = template(tmp_path / "t.json", "t", tags={"kiln.requires": "gpu"})
    p = kiln(home, "build", str(t), check=False)
    assert p.returncode == 2 and "kiln.requires" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.parametrize(("value", "expected"), [("", 0), ("retries = 0", 0), ("retries = 1", 1)])
def test_retries_are_0_unless_config_says_1(tmp_path: Path, value: str, expected: int) -> None:
    assert load_config(home_with(tmp_path, f'queue = "redis://127.0.0.1:1/0"\n{value}')).cluster.retries == expected


@pytest.mark.parametrize("value", ["2", "-1", "true", '"1"', "1.0"])
def test_bad_retries_name_the_file_and_key(tmp_path: Path, value: str) -> None:
    home = home_with(tmp_path, f"retries = {value}")
    with pytest.raises(InvalidInput) as e:
        load_config(home)
    assert "is not 0 or 1" in e.value.message and "never more than once" in e.value.hint
    assert e.value.path == "cluster.retries" and e.value.file == str(home / "config.toml")


def test_a_template_asks_for_a_retry_with_its_tag() -> None:
    from kiln.cluster.routing import retries

    assert retries({}) is None
    assert retries({"kiln.retries": "1"}) == 1 and retries({"kiln.retries": "0"}) == 0
    with pytest.raises(InvalidInput) as e:
        retries({"kiln.retries": "3"}, file="t.json")
    assert e.value.path == ".tags['kiln.retries']" and e.value.file == "t.json" and "at most once" in e.value.message


def test_kiln_build_with_a_bad_retries_tag_exits_2(tmp_path: Path) -> None:
    home = home_with(tmp_path, f'queue = "redis://127.0.0.1:{free_port()}/0"')
    t = template(tmp_path / "t.json", "t", tags={"kiln.retries": "always"})
    p = kiln(home, "build", str(t), check=False)
    assert p.returncode == 2 and "kiln.retries" in p.stderr and "Traceback" not in p.stderr
