"""Crash safety: SIGKILL `pool serve` anywhere, restart it, and nothing leaks.

`pool serve` runs as a subprocess against the Vast double (in this process, so its instances
and billing ledger outlive the kill). After each restart settles we assert: nothing alive on
the provider that the store does not track as live, no instance created without its intent
row, never more than max_instances alive at once, and foreign instances untouched. Every test
runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from poolrun import PoolRun, add_foreigners, wait_until
from vastdouble import VastDouble

from comfyfleet.fleet.states import LIVE, State

S = State
SETTLE = 40.0  # seconds a restarted serve may take to settle (subprocess start-up included)


@pytest.fixture
def double() -> Iterator[VastDouble]:
    d = VastDouble()
    d.add_offers(12)
    d.start_in_thread()
    try:
        yield d
    finally:
        d.stop_thread()


@pytest.fixture
def run(tmp_path: Path, double: VastDouble, store_url: str) -> Iterator[PoolRun]:
    r = PoolRun(tmp_path, double, store_url)
    try:
        yield r
    finally:
        if r.proc is not None and r.proc.poll() is None:
            r.kill()


def settle_and_check(run: PoolRun, foreign: list) -> None:
    """Restart with a long provision_timeout, wait until settled, then check the promises."""
    run.write(provision_timeout="1h")
    run.start()
    run.wait_serving()
    try:
        wait_until(run.settled, SETTLE, "the restarted pool to settle")
    except AssertionError:
        raise AssertionError(f"did not settle; serve log:\n{run.serve_log()[-4000:]}") from None
    run.assert_consistent(foreign)
    assert run.stop() == 130


def every_instance(double: VastDouble) -> list:
    with double._lock:
        return list(double.instances.values())


def creates(double: VastDouble) -> int:
    return len(double.requests_to("create"))


def test_kill_inside_create_before_the_provider_answered(run: PoolRun, double: VastDouble) -> None:
    foreign = add_foreigners(double)
    double.faults.next("create", "hang", seconds=1.0)  # the request sits in the server a second
    run.start()
    double.wait_for_requests("create", 1, timeout=30)
    run.kill()  # the create is still pending; the double carries it out after we are gone
    wait_until(lambda: len(run.ours_alive()) >= 1, 5, "the orphaned create to complete")
    rows = run.rows()
    assert [r.state for r in rows if r.label == run.ours_alive()[0].label] == [S.CREATING]
    settle_and_check(run, foreign)
    # the instance made after the kill was adopted by its label, not duplicated
    first = min(i.id for i in every_instance(double) if not i.foreign)
    adopted = [r for r in run.rows() if r.provider_id == str(first)]
    assert adopted and adopted[0].state in (S.BOOTING, S.PROVISIONING)


def test_a_create_carried_out_after_its_intent_was_given_up_is_destroyed(
    run: PoolRun, double: VastDouble
) -> None:
    foreign = add_foreigners(double)
    best = double.add_offer(score=1000.0)  # search puts it first: the hung create takes it
    double.faults.next("create", "hang", seconds=6)  # longer than create_grace (3 s)
    run.start()
    double.wait_for_requests("create", 1, timeout=30)
    run.kill()
    (late_label,) = [r.label for r in run.rows() if r.state is S.CREATING]
    best.score = 0.0  # the restarted serve rents other offers, so the late create succeeds
    run.start()  # the intent is called lost after create_grace and replaced ...
    run.wait_serving()
    wait_until(lambda: any(i.label == late_label for i in every_instance(double)), 10,
               "the late create to be carried out")  # fmt: skip
    wait_until(
        lambda: all(i.label != late_label for i in run.ours_alive()), 15,
        "the late instance to be destroyed as untracked",
    )  # fmt: skip
    assert [r.state for r in run.rows() if r.label == late_label] == [S.LOST]
    run.stop()
    settle_and_check(run, foreign)


def test_kill_after_the_provider_acted_but_before_the_answer_arrived(
    run: PoolRun, double: VastDouble
) -> None:
    foreign = add_foreigners(double)
    double.faults.next("create", "hang_after", seconds=4)  # created, answer held back
    run.start()
    double.wait_for_requests("create", 1, timeout=30)
    wait_until(lambda: run.ours_alive(), 5, "the create to happen")
    run.kill()
    settle_and_check(run, foreign)
    assert len(run.ours_alive()) == run.min_ready


def test_kill_during_destroy(run: PoolRun, double: VastDouble) -> None:
    foreign = add_foreigners(double)
    run.write(provision_timeout="1.5s")  # instances time out and are destroyed
    double.faults.next("destroy", "hang_after", seconds=4)  # destroyed, answer held back
    run.start()
    double.wait_for_requests("destroy", 1, timeout=30)
    run.kill()
    doomed = [r for r in run.rows() if r.state is S.DESTROYING]
    assert doomed, "the row moved to destroying before the destroy call"
    settle_and_check(run, foreign)
    for r in doomed:
        assert next(x for x in run.rows() if x.id == r.id).state is S.DESTROYED


def test_kill_while_the_provider_is_still_working_on_a_destroy(
    run: PoolRun, double: VastDouble
) -> None:
    foreign = add_foreigners(double)
    run.write(provision_timeout="1.5s")
    double.faults.next("destroy", "hang", seconds=4)  # carried out 4 s later, we are gone by then
    run.start()
    double.wait_for_requests("destroy", 1, timeout=30)
    run.kill()
    double.faults.clear()
    settle_and_check(run, foreign)


def test_kill_during_reconcile_listing(run: PoolRun, double: VastDouble) -> None:
    foreign = add_foreigners(double)
    run.start()
    run.wait_serving()
    wait_until(run.settled, SETTLE, "the first pool to settle")
    seen = len(double.requests_to("list"))
    double.faults.next("list", "hang", seconds=4)
    double.wait_for_requests("list", seen + 1, timeout=10)
    run.kill()
    double.faults.clear()
    settle_and_check(run, foreign)


def test_provider_kills_instances_and_create_errors_leave_nothing_behind(
    run: PoolRun, double: VastDouble
) -> None:
    foreign = add_foreigners(double)
    double.faults.next("create", "error_but_created")  # an error answer naming new_contract
    run.start()
    run.wait_serving()
    wait_until(run.settled, SETTLE, "the pool to settle")
    first = [i.id for i in run.ours_alive()]
    double.kill(first[0])  # the provider loses one: lost, and replaced
    wait_until(lambda: run.settled() and first[0] not in [i.id for i in run.ours_alive()],
               SETTLE, "the lost instance to be replaced")  # fmt: skip
    states = {r.provider_id: r.state for r in run.rows()}
    assert states[str(first[0])] is S.LOST
    errored = next(i for i in every_instance(double) if not i.foreign and i.id not in first)
    assert not errored.alive and states[str(errored.id)] is S.DESTROYED
    run.assert_consistent(foreign)
    assert run.stop() == 130


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_kills(run: PoolRun, double: VastDouble, seed: int) -> None:
    """Several SIGKILLs per run at random moments, with random faults queued before each."""
    rng = random.Random(seed)
    foreign = add_foreigners(double)
    kinds = [
        ("create", "hang", 1.0), ("create", "hang_after", 4.0), ("create", "lost", 0.0),
        ("create", "error_but_created", 0.0), ("create", "no_such_ask", 0.0),
        ("destroy", "hang_after", 4.0), ("destroy", "lost", 0.0), ("destroy", "429_text", 0.0),
        ("list", "503", 0.0), ("list", "429_json", 0.0), ("list", "hang", 2.0),
    ]  # fmt: skip
    run.write(provision_timeout="2s")  # instances cycle: create → boot → time out → destroy
    for _ in range(3):
        for _ in range(rng.randint(1, 3)):
            endpoint, kind, seconds = rng.choice(kinds)
            double.faults.next(endpoint, kind, seconds=seconds)
        run.start()
        wait_until(lambda: creates(double) > 0, 30, "serve to start creating")
        time.sleep(rng.uniform(0.5, 3.0))
        run.kill()
        double.faults.clear()
        run.assert_consistent(foreign)  # holds at the moment of any kill, too (intent rows)
    settle_and_check(run, foreign)


def test_sigterm_stops_within_seconds_and_instances_stay_tracked(
    run: PoolRun, double: VastDouble
) -> None:
    run.start()
    run.wait_serving()
    wait_until(run.settled, SETTLE, "the pool to settle")
    before = {r.id: r.provider_id for r in run.rows() if r.state in LIVE}
    started = time.monotonic()
    assert run.stop(signal.SIGINT) == 130
    assert time.monotonic() - started < 10
    after = {r.id: r.provider_id for r in run.rows() if r.state in LIVE}
    assert after == before and len(run.ours_alive()) == len(before)
    # a restart adopts them: no new create
    n = creates(double)
    run.start()
    run.wait_serving()
    assert creates(double) == n
    assert run.stop() == 130
