"""A randomized chaos run: three replicas on one PostgreSQL are killed, paused and restarted
at random while instances cycle, with provider faults queued. At the end every instance is
tracked or destroyed, nothing bills untracked, and never more than max_instances were alive.

CHAOS_SEED and CHAOS_SECONDS choose the run (CI: a short one; by hand: as long as you like).
"""

from __future__ import annotations

import os
import random
import signal
import time

from poolrun import add_foreigners, wait_until
from replicarun import Replica
from vastdouble import VastDouble

from comfyfleet.fleet.states import LIVE

SEED = int(os.environ.get("CHAOS_SEED", "7"))
SECONDS = float(os.environ.get("CHAOS_SECONDS", "20"))
FAULTS = [
    ("create", "hang_after", 3.0), ("create", "lost", 0.0), ("create", "error_but_created", 0.0),
    ("create", "no_such_ask", 0.0), ("destroy", "lost", 0.0), ("destroy", "hang_after", 3.0),
    ("list", "503", 0.0), ("list", "429_json", 0.0),
]  # fmt: skip


def test_chaos_kills_pauses_and_restarts(replicas: list[Replica], double: VastDouble) -> None:
    rng = random.Random(SEED)
    foreign = add_foreigners(double)
    for r in replicas:
        r.write(provision_timeout="2s", extra_pool='leader_ttl = "2s"\n')  # instances cycle
        r.start()
    end = time.monotonic() + SECONDS
    events: list[str] = []
    while time.monotonic() < end:
        r = rng.choice(replicas)
        what = rng.choice(["kill", "kill", "pause", "fault", "restart"])
        if what == "kill" and r.alive():
            r.kill()
        elif what == "pause" and r.alive():
            assert r.proc is not None
            r.proc.send_signal(signal.SIGSTOP)
            time.sleep(rng.uniform(0.5, 4.0))  # long enough, often, to lose the lead
            r.proc.send_signal(signal.SIGCONT)
        elif what == "fault":
            endpoint, kind, seconds = rng.choice(FAULTS)
            double.faults.next(endpoint, kind, seconds=seconds)
        for dead in replicas:
            if not dead.alive() and rng.random() < 0.7:
                dead.start()
        events.append(f"{what} {replicas.index(r)}")
        time.sleep(rng.uniform(0.2, 2.0))
        assert double.max_alive <= replicas[0].max_instances, events
    double.faults.clear()
    # calm: every replica up, instances allowed to boot for good; the pool must settle
    for r in replicas:
        if r.alive():
            r.kill()
    for r in replicas:
        r.write(provision_timeout="1h", extra_pool='leader_ttl = "2s"\n')
        r.start()
    try:
        wait_until(replicas[0].settled, 60, "the pool to settle after the chaos")
    except AssertionError:
        logs = "\n".join(r.serve_log()[-1500:] for r in replicas)
        raise AssertionError(f"seed {SEED}: did not settle ({events}):\n{logs}") from None
    replicas[0].assert_consistent(foreign)
    # the ledger: what bills is exactly what the store tracks as live (no leaked spend)
    rows = replicas[0].rows()
    live_ids = {r.provider_id for r in rows if r.state in LIVE and r.provider_id}
    billing = {str(i.id) for i in double.live()}
    assert billing <= live_ids, f"seed {SEED}: billing untracked {billing - live_ids}"
    dead_spend = [i for i in double.instances.values() if not i.foreign and not i.alive]
    assert all(str(i.id) not in live_ids for i in dead_spend)
    assert double.max_alive <= replicas[0].max_instances
