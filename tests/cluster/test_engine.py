"""The RQ engine against a real Redis, without building: queue, cancel while queued, the event stream."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from clusterlib import RedisServer, kiln

from kiln.cluster import state
from kiln.cluster.connect import redis_from_url
from kiln.cluster.engine import BuildRequest
from kiln.cluster.follow import follow, to_event
from kiln.cluster.rq_engine import RqEngine
from kiln.events import Event


@pytest.fixture
def engine(redis_server: RedisServer) -> RqEngine:
    r = redis_from_url(redis_server.url)
    r.flushdb()
    return RqEngine(r)


def home_for(tmp_path: Path, redis_server: RedisServer) -> Path:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text(f'[cluster]\nqueue = "{redis_server.url}"\n')
    return home


def test_a_queued_build_is_listed_and_canceled_before_any_worker_takes_it(engine: RqEngine, tmp_path: Path,
                                                                          redis_server: RedisServer) -> None:
    request = BuildRequest("document", "t", document={"x": 1}, requires=("kvm",), timeout_minutes=30)
    job_id = engine.enqueue(request)
    assert {q.name: q.queued for q in engine.queues()} == {"kiln.build.kvm": 1}
    status = json.loads(kiln(home_for(tmp_path, redis_server), "cluster", "status", "--json").stdout)
    assert status["queues"] == [{"name": "kiln.build.kvm", "queued": 1, "started": 0}]
    assert status["workers"] == [] and status["runsInFlight"] == []
    text = kiln(home_for(tmp_path, redis_server), "cluster", "status").stdout
    assert "queues:" in text and "kiln.build.kvm  1" in text.replace("   ", "  ")

    assert engine.cancel(job_id) is True
    assert {q.name: q.queued for q in engine.queues()}.get("kiln.build.kvm", 0) == 0
    ended = follow(engine.redis, job_id, lambda e: None)
    assert ended is not None and ended.code == 130 and "queued" in ended.message
    assert engine.cancel(job_id) is False  # nothing left to cancel
    p = kiln(home_for(tmp_path, redis_server), "cluster", "cancel", job_id, check=False)
    assert p.returncode == 2 and "no build" in p.stderr and "Traceback" not in p.stderr


def test_a_follower_gets_every_event_in_order_then_the_end(engine: RqEngine) -> None:
    r = engine.redis
    events = [Event("begin", "build", "t (run r1)", run_id="r1"), Event("step", "customize", run_id="r1", step_id="customize"),
              Event("finish", "build", "Succeeded", seconds=1.5, run_id="r1")]
    from dataclasses import asdict

    for e in events:
        state.add_event(r, "job1", json.dumps(asdict(e)))
    state.end_stream(r, "job1", 0, "", "r1")
    state.end_stream(r, "job1", 1, "a second end is ignored", "r1")
    got: list[Event] = []
    ended = follow(r, "job1", lambda d: got.append(to_event(d)))
    assert got == events
    assert ended is not None and (ended.code, ended.run_id) == (0, "r1")


def test_the_request_round_trips_as_json() -> None:
    request = BuildRequest("document", "t", document={"a": [1]}, file="/x/t.json", parameters={"p": "v"}, index=1,
                           validate=False, requires=("kvm", "x86_64"), host="h")
    assert BuildRequest.from_json(json.loads(json.dumps(request.to_json()))) == request


def test_a_job_that_fails_in_rq_before_the_build_starts_still_ends_its_follower(engine: RqEngine, tmp_path: Path,
                                                                                 redis_server: RedisServer) -> None:
    from rq import Queue

    from kiln.cluster.rq_engine import JOB_FUNCTION
    from kiln.config import load_config

    home = home_for(tmp_path, redis_server)
    job = Queue("kiln.host.early", connection=engine.redis).enqueue(JOB_FUNCTION, {"not": "a request"})
    kiln(home, "worker", "--name", "early", "--queues", "kiln.host.early", "--burst", env={"KILN_SCRATCH": "state"})
    ended = follow(engine.redis, str(job.id), lambda e: None, config=load_config(home))
    assert ended is not None and ended.code == 1
    assert "the job failed on its worker" in ended.message and "TypeError" in ended.message


def lost_build(engine: RqEngine, request: BuildRequest, worker: str) -> str:
    """`request` queued, then taken by `worker` (out of its queue, in flight there), which is no live worker."""
    from rq import Queue

    from kiln.cluster.routing import queue_for

    job_id = engine.enqueue(request)
    Queue(queue_for(request.requires, request.host), connection=engine.redis).remove(job_id)
    state.set_in_flight(engine.redis, job_id, run_id="", template=request.name, worker=worker, started=1.0,
                        attempt=1, attempts=1 + (request.retries or 0), rq_job=job_id)
    return job_id


def test_a_build_whose_worker_was_lost_is_retried_once_however_many_hosts_notice(engine: RqEngine, tmp_path: Path,
                                                                                redis_server: RedisServer) -> None:
    from rq import Queue

    from kiln.config import load_config

    config = load_config(home_for(tmp_path, redis_server))
    job_id = lost_build(engine, BuildRequest("document", "t", document={"x": 1}, host="gone", retries=1), "gone")
    assert [f.job_id for f in state.reap_lost(engine.redis, config)] == [job_id]
    assert state.reap_lost(engine.redis, config) == []  # the loss was handled: the entry went with it
    # Two more hosts that read the entry before it went: the retry is claimed once.
    flight = state.RunInFlight(job_id, "", "t", "gone", 1.0, 1, 2, job_id)
    from kiln.store.store import Store

    with Store.open(config) as store:
        state.lose(engine.redis, store, flight, "gone stopped heartbeating mid-build")
        state.lose(engine.redis, store, flight, "gone stopped heartbeating mid-build")
    q = Queue("kiln.host.gone", connection=engine.redis)
    assert q.job_ids == [f"{job_id}-attempt2"]
    retry = BuildRequest.from_json(q.jobs[0].args[0])
    assert (retry.attempt, retry.build, retry.retries) == (2, job_id, 1)
    notes = [json.loads(f[b"event"]) for _, f in engine.redis.xrange(state.events_key(job_id))]
    assert [n["message"] for n in notes] == ["worker lost; retrying (attempt 2 of 2): gone stopped heartbeating mid-build"]
    assert not state.ended(engine.redis, job_id)  # a follower of the build goes on following
    # The build's id (the one its submitter knows) reaches the retry: cancel it while it is queued.
    assert engine.cancel(job_id) is True
    assert q.count == 0
    ended = follow(engine.redis, job_id, lambda e: None)
    assert ended is not None and ended.code == 130


def test_a_lost_retry_is_failed_and_a_build_without_retries_is_never_rerun(engine: RqEngine, tmp_path: Path,
                                                                         redis_server: RedisServer) -> None:
    from rq import Queue

    from kiln.config import load_config

    config = load_config(home_for(tmp_path, redis_server))
    once = lost_build(engine, BuildRequest("document", "t", document={"x": 1}, host="gone", retries=0), "gone")
    state.reap_lost(engine.redis, config)
    ended = follow(engine.redis, once, lambda e: None)
    assert ended is not None and ended.code == 1 and ended.message == "worker lost: gone stopped heartbeating mid-build"

    twice = lost_build(engine, BuildRequest("document", "u", document={"x": 1}, host="gone", retries=1), "gone")
    state.reap_lost(engine.redis, config)
    retry_job = f"{twice}-attempt2"
    assert Queue("kiln.host.gone", connection=engine.redis).job_ids == [retry_job]
    Queue("kiln.host.gone", connection=engine.redis).remove(retry_job)  # a worker took the retry, and died too
    state.set_in_flight(engine.redis, twice, run_id="", template="u", worker="gone-too", started=2.0, attempt=2,
                        attempts=2, rq_job=retry_job)
    state.reap_lost(engine.redis, config)
    ended = follow(engine.redis, twice, lambda e: None)
    assert ended is not None and ended.code == 1 and ended.message == "worker lost: gone-too stopped heartbeating mid-build"
    assert Queue("kiln.host.gone", connection=engine.redis).count == 0  # never a third attempt
    assert engine.in_flight() == []


def test_the_engine_default_fills_in_what_the_template_did_not_say(engine: RqEngine) -> None:
    from rq.job import Job

    said = engine.enqueue(BuildRequest("document", "t", document={}, retries=0))
    unsaid = RqEngine(engine.redis, retries=1).enqueue(BuildRequest("document", "t", document={}))
    assert Job.fetch(said, connection=engine.redis).args[0]["retries"] == 0
    assert Job.fetch(unsaid, connection=engine.redis).args[0]["retries"] == 1


def test_config_retries_are_the_default_and_a_template_tag_wins(redis_server: RedisServer, tmp_path: Path) -> None:
    from clusterlib import template
    from rq.job import Job

    from kiln.cluster.submit import engine as engine_of
    from kiln.cluster.submit import requests_for
    from kiln.config import load_config
    from kiln.template.load import load_template

    home = home_for(tmp_path, redis_server)
    (home / "config.toml").write_text(f'[cluster]\nqueue = "{redis_server.url}"\nretries = 1\n')
    config = load_config(home)
    rq = engine_of(config)
    assert rq.retries == 1
    for tags, expected in (({}, 1), ({"kiln.retries": "0"}, 0)):
        t = template(tmp_path / "t.json", "t", tags=tags)
        (request,) = requests_for(t, json.loads(t.read_text()), load_template(t, {}, config=config), {},
                                  validate=False, boot_timeout_s=1, keep_work=False)
        assert Job.fetch(rq.enqueue(request), connection=rq.redis).args[0]["retries"] == expected


def test_kiln_build_with_the_catalog_unreachable_exits_2_and_queues_nothing(engine: RqEngine, tmp_path: Path,
                                                                           redis_server: RedisServer) -> None:
    from clusterlib import free_port, template

    home = home_for(tmp_path, redis_server)
    url = f"postgresql://kiln@127.0.0.1:{free_port()}/kiln"  # nothing listens there
    (home / "config.toml").write_text(f'[cluster]\nqueue = "{redis_server.url}"\ncatalog = "{url}"\n')
    p = kiln(home, "build", str(template(tmp_path / "t.json", "t")), check=False)
    assert p.returncode == 2, p.stderr
    assert f"cannot open the catalog {url}" in p.stderr and "[cluster] catalog" in p.stderr
    assert "Traceback" not in p.stderr
    assert engine.queues() == []
