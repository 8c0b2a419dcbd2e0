"""`pool serve` replicas on one PostgreSQL: one leads, a dead, cut off or paused leader is
replaced within the bound, and nothing is created twice or left untracked."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from poolrun import add_foreigners, wait_until
from replicarun import HANDOVER_BOUND, Replica, current_leader, leading_replica
from vastdouble import VastDouble

from netcut import TcpCut

SETTLE = 40.0


def _creates(double: VastDouble) -> int:
    return len(double.requests_to("create"))


def _check_no_double_create(replica: Replica, double: VastDouble) -> None:
    """One create per intent: every instance the double made belongs to exactly one row."""
    rows = replica.rows()
    with double._lock:
        ours = [i for i in double.instances.values() if not i.foreign]
    labels = [i.label for i in ours]
    assert len(labels) == len(set(labels)), f"one intent created twice: {labels}"
    by_label = {r.label: r for r in rows}
    for inst in ours:
        row = by_label.get(inst.label)
        assert row is not None, f"{inst.id} has no row"
        assert row.provider_id in (None, str(inst.id)), (row, inst.id)


def _settle(replica: Replica, foreign: list) -> None:
    try:
        wait_until(replica.settled, SETTLE, "the pool to settle")
    except AssertionError:
        raise AssertionError(f"did not settle:\n{replica.serve_log()[-3000:]}") from None
    replica.assert_consistent(foreign)


def test_one_leader_and_sigkill_hands_over_within_the_bound(
    replicas: list[Replica], double: VastDouble, pg_url: str
) -> None:
    foreign = add_foreigners(double)
    for r in replicas[:2]:
        r.start()
    for r in replicas[:2]:
        r.wait_started()
    old, row = leading_replica(replicas, pg_url)
    _settle(old, foreign)
    standby = next(r for r in replicas[:2] if r is not old)
    assert "leads pool" not in standby.serve_log()  # only one replica ever led
    # every replica but the leader leaves the provider alone
    created = _creates(double)
    old.kill()
    killed = time.monotonic()
    new = wait_until(
        lambda: (lambda x: x if x and x.epoch == row.epoch + 1 else None)(current_leader(pg_url)),
        HANDOVER_BOUND,
        "the standby to take the lead",
        step=0.05,
    )
    assert time.monotonic() - killed <= HANDOVER_BOUND
    assert f"-{standby.proc.pid}-" in new.holder
    _settle(standby, foreign)
    # the new leader adopted the instances: nothing was created to replace them
    assert _creates(double) == created
    _check_no_double_create(standby, double)
    # pool status: the replicas, the leader and since when, the epoch
    out = standby.cli("status", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["epoch"] == row.epoch + 1
    leaders = [r for r in doc["replicas"] if r["leader"]]
    assert [r["id"] for r in leaders] == [new.holder]
    assert leaders[0]["since"] == new.since
    by_listen = {r["listen"]: r for r in doc["replicas"]}
    assert by_listen[standby.listen]["leader"]
    # the killed one is listed (not leading) until it has been unseen for 3 lease lifetimes
    assert old.listen not in by_listen or not by_listen[old.listen]["leader"]
    assert standby.stop() == 130


def test_leader_connection_cut_hands_over(
    replicas: list[Replica], double: VastDouble, pg_url: str, pg_cluster, tmp_path: Path
) -> None:
    """The leader is cut off from PostgreSQL: its backends are terminated
    (pg_terminate_backend) and, as in a real partition, it cannot reconnect."""
    cuts = [TcpCut(pg_cluster.port) for _ in range(2)]
    try:
        # each replica reaches the database through its own cuttable path
        for i, cut in enumerate(cuts):
            url = pg_url.replace(f":{pg_cluster.port}/", f":{cut.port}/")
            replicas[i] = Replica(tmp_path / f"cut{i}", double, url)
        for r in replicas[:2]:
            r.start()
        for r in replicas[:2]:
            r.wait_started()
        old, row = leading_replica(replicas[:2], pg_url)
        _settle(old, [])
        created = _creates(double)
        cut = cuts[replicas.index(old)]
        ports = sorted(cut.upstream_ports)
        cut.cut()
        if ports:
            pg_cluster_sql(
                pg_cluster,
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                f"WHERE client_port IN ({','.join(map(str, ports))})",
            )
        standby = next(r for r in replicas[:2] if r is not old)
        # a generous polled deadline: how fast the lead moves is the benchmark's figure
        moved = wait_until(
            lambda: (c := current_leader(pg_url)) is not None and c.epoch > row.epoch and c,
            4 * HANDOVER_BOUND, "the standby to lead",
        )  # fmt: skip
        assert f"-{standby.proc.pid}-" in moved.holder, moved
        assert "stops leading" in wait_until(
            lambda: "stops leading" in old.serve_log() and old.serve_log(),
            20,
            "the old leader to step down",
        )
        cut.heal()
        assert old.alive()  # it stood down, it did not die: it serves leases and stands by
        _settle(standby, [])
        assert _creates(double) == created
        _check_no_double_create(standby, double)
        assert current_leader(pg_url).epoch == moved.epoch  # the healed one did not take it
    finally:
        for r in replicas[:2]:
            if r.alive():
                r.kill()
        for cut in cuts:
            cut.close()


def test_a_paused_leader_cannot_record_a_provider_action(
    replicas: list[Replica], double: VastDouble, pg_url: str
) -> None:
    for r in replicas[:2]:
        r.start()
    for r in replicas[:2]:
        r.wait_started()
    old, row = leading_replica(replicas, pg_url)
    _settle(old, [])
    old.proc.send_signal(signal.SIGSTOP)
    try:
        new = wait_until(
            lambda: (lambda x: x if x and x.epoch > row.epoch else None)(current_leader(pg_url)),
            HANDOVER_BOUND,
            "a handover from the paused leader",
        )
        standby = next(r for r in replicas[:2] if r is not old)
        # while it sleeps, the world changes: the pool needs one more instance
        for inst in double.live():
            double.kill(inst.id)
            break
    finally:
        old.proc.send_signal(signal.SIGCONT)
    wait_until(lambda: "stops leading" in old.serve_log(), 20, "the woken leader to step down")
    log = old.serve_log()
    woke = log.rindex("stops leading")
    assert "leads pool" not in log[woke:]
    assert current_leader(pg_url).holder == new.holder
    _settle(standby, [])
    _check_no_double_create(standby, double)
    old.assert_consistent([])


def pg_cluster_sql(cluster, sql: str) -> None:
    out = cluster._run(
        str(cluster.bindir / "psql"), "-h", "127.0.0.1", "-p", str(cluster.port),
        "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c", sql,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr


def test_second_serve_on_one_sqlite_file_is_refused_and_a_restart_after_sigkill_is_not(
    tmp_path: Path, double: VastDouble
) -> None:
    url = f"sqlite:///{tmp_path / 'pool.db'}"
    first = Replica(tmp_path / "a", double, url)
    second = Replica(tmp_path / "b", double, url)
    try:
        first.start()
        first.wait_started()
        out = second.cli("serve")
        assert out.returncode == 2, out.stderr
        assert "already serves the SQLite store" in out.stderr and "PostgreSQL" in out.stderr
        assert "Traceback" not in out.stderr
        first.kill()
        second.start()
        second.wait_started()
        wait_until(lambda: "leads pool" in second.serve_log(), 10, "the restart to lead")
    finally:
        for r in (first, second):
            if r.alive():
                r.kill()
