"""Leader handover after SIGKILL, and lease transactions per second on PostgreSQL.

    python benchmarks/fleet_replicas.py [--runs 10] [--rows 1000] [--workers 4]

Targets (issue 13): with two `pool serve` replicas on one PostgreSQL (default leader_ttl, 4 s),
SIGKILL the leader 10 times; the standby leads (the leader row's epoch moved to it) within
p50 ≤ 5 s, max ≤ 15 s. Lease takes (the SKIP LOCKED transaction of fleet/leases.py: ready row
→ leased with its lease row; the standby keys are attached beforehand, so key attachment is
left out) from 2 processes (replicas) on 1,000 ready rows: ≥ 500 transactions/s.

PostgreSQL runs from a throwaway cluster (tests/pg.py, fsync off, like the tests); the Vast
double runs in this process.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "fleet"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "fleet_replicas"))

from poolrun import POOL, wait_until
from replicarun import Replica, current_leader
from vastdouble import Timing, VastDouble

from comfyfleet.fleet.states import State
from comfyfleet.fleet.store import Store, instances
from pg import start_cluster


def handover(url: str, runs: int) -> list[float]:
    """Seconds from SIGKILL of the leader until the other replica holds the lead."""
    double = VastDouble(timing=Timing(loading=100_000.0))
    double.add_offers(16)
    double.start_in_thread()
    top = Path(tempfile.mkdtemp(prefix="bench-replicas-"))
    reps = [Replica(top / f"r{i}", double, url, extra_pool="") for i in range(2)]
    times: list[float] = []
    try:
        for r in reps:
            r.start()
        for r in reps:
            r.wait_started()
        for _ in range(runs):
            row = wait_until(lambda: current_leader(url), 30, "a leader")
            old = next(r for r in reps if r.alive() and f"-{r.proc.pid}-" in row.holder)
            old.kill()
            t0 = time.monotonic()
            wait_until(
                lambda row=row: (c := current_leader(url)) is not None and c.epoch > row.epoch,
                60, "the handover", step=0.02,
            )  # fmt: skip
            times.append(time.monotonic() - t0)
            old.start()
            old.wait_started()
    finally:
        for r in reps:
            if r.alive():
                r.kill()
        double.stop_thread()
    return times


async def _seed(url: str, rows: int) -> None:
    from comfyfleet.fleet.leases import lease_keys

    store = await Store.open(url, pool=POOL)
    now = time.time()
    try:
        async with store.engine.begin() as conn:
            ids = [secrets.token_hex(6) for _ in range(rows)]
            await conn.execute(
                instances.insert(),
                [
                    dict(
                        id=i, pool=POOL, label=f"comfyfleet-{POOL}-{i}", state=State.READY.value,
                        provider_kind="vast", dph=0.1, created_at=now, updated_at=now,
                        state_since=now + n * 1e-6, destroy_attempts=0,
                    )
                    for n, i in enumerate(ids)
                ],
            )  # fmt: skip
            await conn.execute(
                lease_keys.insert(),
                [
                    dict(
                        lease_id=secrets.token_hex(8), pool=POOL, instance_id=i, state="standby",
                        private_key="bench", public_line="bench", created_at=now,
                    )
                    for i in ids
                ],
            )  # fmt: skip
    finally:
        await store.close()


def _replica(url: str, workers: int, start: float, out: mp.Queue) -> None:
    from comfyfleet.fleet import leases

    async def main() -> int:
        store = await Store.open(url, pool=POOL)
        try:
            # every worker's connection is open before the clock starts (connecting and
            # authenticating is not the transaction being measured)
            conns = [await store.engine.connect() for _ in range(workers)]
            for conn in conns:
                await conn.close()
            while time.time() < start:
                await asyncio.sleep(0.005)

            async def worker() -> int:
                n = 0
                while await leases.take(store, ttl=600, now=time.time()) is not None:
                    n += 1
                return n

            return sum(await asyncio.gather(*(worker() for _ in range(workers))))
        finally:
            await store.close()

    n = asyncio.run(main())
    out.put((n, time.time() - start))  # from the common start to this replica's last take


def lease_rate(url: str, rows: int, workers: int) -> tuple[int, float]:
    """Every ready row leased by 2 replica processes: (leases, wall seconds)."""
    asyncio.run(_seed(url, rows))
    out: mp.Queue = mp.Queue()
    start = time.time() + 2.0  # both processes connected before the clock starts
    procs = [mp.Process(target=_replica, args=(url, workers, start, out)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [out.get(timeout=300) for _ in procs]
    for p in procs:
        p.join()
    return sum(n for n, _ in results), max(s for _, s in results)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=4, help="concurrent takes per replica")
    args = ap.parse_args()
    cluster = start_cluster()
    try:
        times = handover(cluster.create_database("bench_handover"), args.runs)
        url = cluster.create_database("bench_leases")
        total, wall = lease_rate(url, args.rows, args.workers)
    finally:
        cluster.stop()
    p50, worst = statistics.median(times), max(times)
    load = os.getloadavg()[0]
    print(f"(load average {load:.1f} on {os.cpu_count()} cores while measuring)")
    print("| figure | measured | target |\n|---|---|---|")
    print(
        f"| leader handover after SIGKILL, p50 / max over {len(times)} runs "
        f"| {p50:.2f} s / {worst:.2f} s | ≤ 5 s / ≤ 15 s |"
    )
    print(
        f"| lease transactions/s on PostgreSQL, 2 replicas, {args.rows} ready rows "
        f"| {total / wall:.0f}/s ({total} in {wall:.2f} s) | ≥ 500/s |"
    )


if __name__ == "__main__":
    main()
