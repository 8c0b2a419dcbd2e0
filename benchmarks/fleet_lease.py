"""Warm lease latency over HTTP: 1,000 ready instances with standby keys, open loop.

    python benchmarks/fleet_lease.py [--instances 1000] [--rate 100] [--seconds 10]
                                     [--connections 50] [--store sqlite|URL]

Target (issue 12): p99 ≤ 25 ms at 100 leases/s for 10 s over 50 connections.

The API (uvicorn, the same ``create_app``/``serve_api`` as ``pool serve``) runs in a child
process over a SQLite store (or the PostgreSQL URL given) seeded with ready rows, each with a
standby key, so a lease is one store transaction. The client sends request i at
``t0 + i / rate`` whatever the answers do (open loop) and measures from that intended send
time, so a slow server cannot hide its queue (no coordinated omission).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

TOKEN = "bench-" + secrets.token_hex(16)


async def _seed(url: str, n: int) -> None:
    from comfyfleet.fleet.store import Store
    from fleet_api.conftest import make_ready

    store = await Store.open(url, pool="bench")
    try:
        await make_ready(store, n)
    finally:
        await store.close()


def _serve(url: str, token: str, port_q: mp.Queue) -> None:
    async def main() -> None:
        from comfyfleet.fleet.api import ApiContext, bind, serve_api
        from comfyfleet.fleet.store import Store

        class NoKeys:  # standby keys are already on the rows; releases are not measured
            async def add(self, row: object, line: str) -> None: ...
            async def remove(self, row: object, line: str) -> None: ...

        store = await Store.open(url, pool="bench")
        ctx = ApiContext(store=store, operator_token=token, lease_ttl=3600.0, keys=NoKeys())
        sock = bind("127.0.0.1:0")
        port_q.put(sock.getsockname()[1])
        await serve_api(ctx, sock)

    asyncio.run(main())


async def _load(base: str, rate: float, seconds: float, connections: int) -> list[float]:
    total = int(rate * seconds)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    conn = aiohttp.TCPConnector(limit=connections)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(connector=conn) as http:
        for _ in range(connections):  # open the connections before the clock starts
            async with http.get(base + "/healthz") as r:
                await r.read()
        t0 = time.perf_counter() + 0.2

        async def one(i: int) -> None:
            due = t0 + i / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            async with http.post(base + "/v1/leases", json={"wait_s": 0}, headers=headers) as r:
                await r.read()
                statuses[r.status] = statuses.get(r.status, 0) + 1
            latencies.append(time.perf_counter() - due)

        await asyncio.gather(*(one(i) for i in range(total)))
    if statuses.get(201, 0) != total:
        raise SystemExit(f"not every request was leased: {statuses}")
    return latencies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instances", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--store", default="sqlite")
    args = ap.parse_args()
    if args.rate * args.seconds > args.instances:
        raise SystemExit("--instances must cover rate × seconds leases")
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'pool.db'}" if args.store == "sqlite" else args.store
        asyncio.run(_seed(url, args.instances))
        port_q: mp.Queue = mp.get_context("spawn").Queue()
        proc = mp.get_context("spawn").Process(
            target=_serve, args=(url, TOKEN, port_q), daemon=True
        )
        proc.start()
        try:
            port = port_q.get(timeout=60)
            lat = asyncio.run(
                _load(f"http://127.0.0.1:{port}", args.rate, args.seconds, args.connections)
            )
        finally:
            proc.terminate()
            proc.join(10)
    lat_ms = sorted(x * 1000 for x in lat)
    p50 = statistics.median(lat_ms)
    p99 = lat_ms[min(len(lat_ms) - 1, int(len(lat_ms) * 0.99))]
    store = "SQLite" if args.store == "sqlite" else "PostgreSQL"
    print(
        f"warm lease over HTTP ({store}, {args.instances} ready, {args.rate:g}/s for "
        f"{args.seconds:g}s, {args.connections} connections): p50 {p50:.1f} ms, "
        f"p99 {p99:.1f} ms, max {lat_ms[-1]:.1f} ms (target p99 ≤ 25 ms: "
        f"{'met' if p99 <= 25 else 'NOT met'})"
    )


if __name__ == "__main__":
    main()
