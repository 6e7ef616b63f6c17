"""What the catalog's writers lock, on PostgreSQL (kiln.store.db): writers into one gallery image
definition queue and writers into another run meanwhile (shown with the server's own lock table,
not with timing); reapers racing over the same dead runs mark each exactly once; a server that is
down at submit time or goes away mid-write is a clear error and leaves no partial rows."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from store_helpers import REPO, kiln_cmd
from templates import debian12_template

SUB = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.Compute"
GALLERY = f"{SUB}/galleries/g"
DIGEST = "ab" * 32
ENV = {"PYTHONPATH": str(REPO / "src")}


def _gallery(store: object, *names: str) -> list[object]:
    """A blob row (no bytes: versions only point at it) and a definition per name."""
    with store.catalog.write() as db:  # type: ignore[attr-defined]
        db.execute("INSERT INTO blobs (digest, virtual_size, size, created) VALUES (?, 1, 513, 0)", (DIGEST,))
    store.galleries.create(GALLERY)  # type: ignore[attr-defined]
    return [store.galleries.create_definition(f"{GALLERY}/images/{n}", publisher="p", offer="o", sku=n)  # type: ignore[attr-defined]
            for n in names]


def _wait(what: str, check: object, limit_s: float = 300.0) -> None:
    """Poll until `check()` holds (a generous limit against a hang, not a measurement)."""
    deadline = time.monotonic() + limit_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(0.05)


def _publish_in_thread(home: Path, definition: str) -> tuple[threading.Thread, list[str], list[BaseException]]:
    """Publish Latest{1} into `definition` from a thread with its own connection."""
    from kiln.config import load_config
    from kiln.store.galleries import VersionRule
    from kiln.store.store import Store

    got: list[str] = []
    errors: list[BaseException] = []

    def publish() -> None:
        try:
            with Store.open(load_config(home)) as store:
                d = store.galleries.get_definition(definition)
                got.append(store.galleries.add_version(d, DIGEST, rule=VersionRule("Latest", major=1), target_regions=()).version)
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=publish, daemon=True)
    t.start()
    return t, got, errors


def test_publishers_into_one_definition_queue_and_into_another_do_not(kiln_home: Path, catalog_backend: str,
                                                                       catalog_url: str) -> None:
    if catalog_backend != "postgresql":
        pytest.skip("SQLite has one writer at a time by design (BEGIN IMMEDIATE): nothing to run in parallel")
    from kiln.config import load_config
    from kiln.store.db import open_catalog
    from kiln.store.store import Store

    with Store.open(load_config(kiln_home)) as store, ExitStack() as stack:
        web, api = _gallery(store, "web", "api")
        holder = open_catalog(catalog_url)
        stack.callback(holder.close)
        holder_pid = holder.one("SELECT pg_backend_pid()")[0]  # type: ignore[index]
        # A publish into "web" in progress: its transaction holds web's row lock and stays open.
        db = stack.enter_context(holder.write(parents=[("gallery_images", web.id.key)]))  # type: ignore[attr-defined]

        # Meanwhile a publish into "api" runs to its commit (under one global lock it would wait here).
        t, got, errors = _publish_in_thread(kiln_home, str(api.id))  # type: ignore[attr-defined]
        t.join(timeout=300)
        assert not t.is_alive() and not errors and got == ["1.0.0"]

        # A publish into "web" waits, and what it waits on is the holder's row lock.
        t, got, errors = _publish_in_thread(kiln_home, str(web.id))  # type: ignore[attr-defined]

        def blocked_by_holder() -> bool:
            rows = store.catalog.query("SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND ? = ANY(pg_blocking_pids(pid))",
                                       (holder_pid,))
            return len(rows) == 1

        _wait("the second publish into web to wait on the holder's lock", blocked_by_holder)
        assert t.is_alive() and got == [] and store.galleries.list_versions(str(web.id)) == []  # type: ignore[attr-defined]
        row = store.catalog.one("SELECT l.mode, c.relname FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
                                " WHERE l.pid = ? AND l.locktype = 'relation' AND c.relname = 'gallery_images'", (holder_pid,))
        assert row is not None and row["mode"] == "RowShareLock"  # FOR UPDATE of a row, no table lock
        db.execute("SELECT 1")  # the holder's transaction is still usable, then commits
        stack.close()
        t.join(timeout=300)
        assert not t.is_alive() and not errors and got == ["1.0.0"]
        assert [v.version for v in store.galleries.list_versions(str(web.id))] == ["1.0.0"]  # type: ignore[attr-defined]


LAB_PUBLISHER = textwrap.dedent('''\
    import sys
    from kiln.config import load_config
    from kiln.ids import parse
    from kiln.store.labs import PendingImage
    from kiln.store.store import Store

    labs, each, me, digest = sys.argv[1].split(","), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    with Store.open(load_config()) as store:
        sys.stdin.readline()  # start together
        for i in range(each):
            lab = store.labs.get(labs[i % len(labs)])
            shared = parse(f"{lab.id}/customimages/shared-{i}")  # every process publishes this one too
            own = parse(f"{lab.id}/customimages/{me}-{i}")
            pending = [PendingImage(rid, lab, digest, "Linux", "Generalized", "", "kiln", "", False, "", {}, float(i))
                       for rid in (shared, own)]
            print(*["ok" if o is None else o.message for o in store.labs.commit_images(pending)], flush=True)
''')


def test_many_processes_commit_images_into_the_same_labs(kiln_home: Path, tmp_path: Path, catalog_backend: str) -> None:
    # commit_images locks each lab it lists into: one name published by every process at once is
    # listed once (the others find it listed with the same digest), and nothing is lost.
    from kiln.config import load_config
    from kiln.store.store import Store

    with Store.open(load_config(kiln_home)) as store:
        with store.catalog.write() as db:
            db.execute("INSERT INTO blobs (digest, virtual_size, size, created) VALUES (?, 1, 513, 0)", (DIGEST,))
        labs = [str(lab.id) for lab in store.labs.create_many(
            [f"/subscriptions/s/resourceGroups/rg/providers/Microsoft.DevTestLab/labs/lab{i}" for i in range(2)], "westus2")]
    script = tmp_path / "labs.py"
    script.write_text(LAB_PUBLISHER)
    env = {**os.environ, **ENV, "KILN_HOME": str(kiln_home)}
    procs, each = 4, 10
    running = [subprocess.Popen([sys.executable, str(script), ",".join(labs), str(each), f"p{n}", DIGEST], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for n in range(procs)]
    outs = [p.communicate("go\n", timeout=600) for p in running]
    for p, (_out, err) in zip(running, outs, strict=True):
        assert p.returncode == 0, err
    assert all(line == "ok ok" for out, _ in outs for line in out.splitlines())
    with Store.open(load_config(kiln_home)) as store:
        names = sorted(r["name"] for r in store.catalog.query("SELECT name FROM lab_custom_images"))
    assert names == sorted([f"shared-{i}" for i in range(each)] + [f"p{n}-{i}" for n in range(procs) for i in range(each)])


REAPER = textwrap.dedent('''\
    import sys
    from kiln.config import load_config
    from kiln.store.store import Store

    how = sys.argv[1]
    with Store.open(load_config()) as store:
        runs = [r["run_id"] for r in store.catalog.query("SELECT run_id FROM runs ORDER BY run_id")]
        sys.stdin.readline()  # start together
        if how == "reap":
            print(store.runs.reap())
        else:
            print(*[r for r in runs if store.runs.mark_lost(r, "worker lost: w1 stopped heartbeating")])
''')


@pytest.mark.parametrize("how", ["reap", "mark_lost"])
def test_reapers_racing_over_the_same_dead_runs_mark_each_once(kiln_home: Path, tmp_path: Path,
                                                               catalog_backend: str, how: str) -> None:
    from kiln.config import load_config
    from kiln.store.store import Store

    gone = subprocess.Popen(["sleep", "600"])  # its pid and start time, then it exits: a killed build's
    runs_count = 60
    with Store.open(load_config(kiln_home)) as store:
        from kiln.store.blobs import process_start

        start = process_start(gone.pid)
        gone.kill()
        gone.wait()
        templates = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.VirtualMachineImages/imageTemplates"
        ids = [store.runs.create(f"{templates}/t{i % 3}", run_id=f"run{i:03d}") for i in range(runs_count)]
        with store.catalog.write() as db:
            db.execute("UPDATE runs SET pid = ?, pid_start = ?", (gone.pid, start))
    script = tmp_path / "reap.py"
    script.write_text(REAPER)
    env = {**os.environ, **ENV, "KILN_HOME": str(kiln_home)}
    running = [subprocess.Popen([sys.executable, str(script), how], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env) for _ in range(4)]
    outs = [p.communicate("go\n", timeout=600) for p in running]
    for p, (_out, err) in zip(running, outs, strict=True):
        assert p.returncode == 0, err
    if how == "reap":
        assert sum(int(out) for out, _ in outs) == runs_count  # each run counted by exactly one reaper
    else:
        marked = [r for out, _ in outs for r in out.split()]
        assert sorted(marked) == ids  # each run marked by exactly one, none twice
    with Store.open(load_config(kiln_home)) as store:
        states = {(r.run_state, r.message) for r in store.runs.list()}
    want = "the kiln process running it exited without finishing it" if how == "reap" else "worker lost: w1 stopped heartbeating"
    assert states == {("Failed", want)}


@pytest.fixture
def own_server(catalog_backend: str) -> Iterator[object]:
    """A PostgreSQL server of this test's own, to stop and start again."""
    if catalog_backend != "postgresql":
        pytest.skip("an unreachable catalog server is a PostgreSQL case (SQLite is a local file)")
    from postgres import PostgresServer

    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


def test_a_stopped_server_at_submit_and_mid_write_is_a_clear_error_and_leaves_no_rows(
        kiln_home: Path, tmp_path: Path, own_server: object, monkeypatch: pytest.MonkeyPatch) -> None:
    from kiln.config import load_config
    from kiln.errors import InvalidInput
    from kiln.store.store import Store

    url = own_server.database().replace("kiln@", "kiln:s3cret@")  # type: ignore[attr-defined]
    shown = url.replace("kiln:s3cret@", "kiln:***@")
    monkeypatch.setenv("KILN_CATALOG", url)
    with Store.open(load_config(kiln_home)) as store:
        _gallery(store, "web")
        before = store.catalog.dump()
    own_server.halt()  # type: ignore[attr-defined]

    # Submit time: kiln build (and a store write) exit 2 naming the catalog, without its password.
    template = debian12_template(tmp_path, f"{SUB}/images/img")
    for args in (("build", str(template)), ("gallery", "create", f"{SUB}/galleries/other")):
        proc = kiln_cmd(kiln_home, *args)
        assert proc.returncode == 2, proc.stderr
        assert f"cannot open the catalog {shown}" in proc.stderr, proc.stderr
        assert "[cluster] catalog" in proc.stderr and "s3cret" not in proc.stderr and "Traceback" not in proc.stderr

    # Mid-write: the server goes away inside a transaction that has written part of its rows.
    own_server.resume()  # type: ignore[attr-defined]
    with Store.open(load_config(kiln_home)) as store:
        with pytest.raises(InvalidInput) as caught, store.catalog.write() as db:
            db.execute("INSERT INTO galleries (key, id, location, description, created) VALUES ('k', 'K', '', '', 0)")
            own_server.halt()  # type: ignore[attr-defined]
            db.execute("INSERT INTO galleries (key, id, location, description, created) VALUES ('k2', 'K2', '', '', 0)")
        assert caught.value.message.startswith(f"lost the connection to the catalog {shown}")
        assert "s3cret" not in caught.value.message and "[cluster] catalog" in (caught.value.hint or "")
    own_server.resume()  # type: ignore[attr-defined]
    with Store.open(load_config(kiln_home)) as store:
        assert store.catalog.dump() == before  # the server rolled the cut transaction back: no partial rows
        web = store.galleries.get_definition(f"{GALLERY}/images/web")
        from kiln.store.galleries import VersionRule

        assert store.galleries.add_version(web, DIGEST, rule=VersionRule("Latest", major=1), target_regions=()).version == "1.0.0"


VM_ADDER = textwrap.dedent('''\
    import sys
    from pathlib import Path
    from kiln.config import load_config
    from kiln.errors import InvalidInput
    from kiln.ids import parse
    from kiln.store.store import Store
    from kiln.store.vms import VirtualMachine

    me, digest = sys.argv[1], sys.argv[2]
    with Store.open(load_config()) as store:
        vm = VirtualMachine(parse(f"/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/{me}"),
                            "img", digest, "Linux", "V2", "azureuser", "ssh-ed25519 AAAA", Path("/k"), 2222, 1, 512,
                            1 << 30, Path("/d"))
        sys.stdin.readline()  # start together
        try:
            store.vms.add(vm)
            print("added", store.catalog.retries)
        except InvalidInput as e:
            print("refused", store.catalog.retries, e.message)
''')


def test_many_processes_taking_one_ssh_port_at_once_one_gets_it(kiln_home: Path, tmp_path: Path,
                                                                 catalog_backend: str) -> None:
    # "Is the port free" is a read over all VMs with no row to lock: a serializable transaction
    # (Catalog.transact) on PostgreSQL, run again when two overlap; under READ COMMITTED two
    # adders could both find it free.
    from kiln.config import load_config
    from kiln.store.store import Store

    with Store.open(load_config(kiln_home)) as store, store.catalog.write() as db:
        db.execute("INSERT INTO blobs (digest, virtual_size, size, created) VALUES (?, 1, 513, 0)", (DIGEST,))
    script = tmp_path / "vm.py"
    script.write_text(VM_ADDER)
    env = {**os.environ, **ENV, "KILN_HOME": str(kiln_home)}
    running = [subprocess.Popen([sys.executable, str(script), f"vm{n}", DIGEST], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for n in range(6)]
    outs = [p.communicate("go\n", timeout=600) for p in running]
    for p, (_out, err) in zip(running, outs, strict=True):
        assert p.returncode == 0, err
    results = [out.split(maxsplit=2) for out, _ in outs]
    assert sorted(r[0] for r in results) == ["added"] + ["refused"] * 5, results
    assert all("SSH port 2222 belongs to VM" in r[2] for r in results if r[0] == "refused")
    with Store.open(load_config(kiln_home)) as store:
        assert [vm.ssh_port for vm in store.vms.list()] == [2222]


def test_a_serializable_transaction_that_lost_a_race_runs_again_and_sees_the_winner(kiln_home: Path,
                                                                                     catalog_backend: str) -> None:
    # The interleaving made by hand: A reads "port 2222 is free", B adds a VM on 2222 and commits,
    # then A inserts its own. PostgreSQL refuses A's commit (40001) and transact() runs A's body
    # again, which now finds B's VM. (SQLite: A's BEGIN IMMEDIATE would keep B out, no race to make.)
    if catalog_backend != "postgresql":
        pytest.skip("SQLite's one writer cannot interleave two transactions")
    from kiln.config import load_config
    from kiln.errors import InvalidInput
    from kiln.ids import parse
    from kiln.store.store import Store
    from kiln.store.vms import VirtualMachine

    def vm(name: str) -> VirtualMachine:
        return VirtualMachine(parse(f"{SUB}/virtualMachines/{name}"), "img", DIGEST, "Linux", "V2", "azureuser",
                              "ssh-ed25519 AAAA", Path("/k"), 2222, 1, 512, 1 << 30, Path("/d"))

    with Store.open(load_config(kiln_home)) as store:
        with store.catalog.write() as db:
            db.execute("INSERT INTO blobs (digest, virtual_size, size, created) VALUES (?, 1, 513, 0)", (DIGEST,))
        attempts: list[str] = []

        def add_a(db: object) -> None:
            taken = db.execute("SELECT id FROM vms WHERE ssh_port = 2222").fetchone()  # type: ignore[attr-defined]
            attempts.append("taken" if taken else "free")
            if taken:
                raise InvalidInput(f"SSH port 2222 belongs to VM {taken['id']}")
            if len(attempts) == 1:  # B adds its VM and commits while A is between its read and its write
                with Store.open(load_config(kiln_home)) as other:
                    other.vms.add(vm("b"))
            a = vm("a")
            db.execute("INSERT INTO vms (key, id, name, lab_key, image_id, image_key, digest, os_type, hyper_v_generation,"  # type: ignore[attr-defined]
                       " admin_username, public_key, key_path, ssh_port, cpus, memory_mib, disk_size, dir, created)"
                       " VALUES (?, ?, 'a', '', 'img', 'img', ?, 'Linux', 'V2', 'u', 'k', '/k', 2222, 1, 512, 1, '/d', 0)",
                       (a.id.key, str(a.id), DIGEST))

        with pytest.raises(InvalidInput, match="SSH port 2222 belongs to VM .*/b"):
            store.catalog.transact(add_a)
        assert attempts == ["free", "taken"] and store.catalog.retries == 1
        assert [v.name for v in store.vms.list()] == ["b"]
