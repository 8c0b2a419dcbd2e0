"""Leases across replicas: two lease APIs (two processes' worth of connection pools) on one
PostgreSQL store. 500 concurrent requests spread over both never lease one instance twice,
and a request waiting on one replica is served when the leader makes an instance ready."""

from __future__ import annotations

import asyncio

from comfyfleet.fleet.states import State
from fleet_api.conftest import make_ready, start_api  # the lease API's own fixtures

__all__ = ["start_api"]  # a fixture, used by name


async def test_500_requests_over_two_replicas_lease_each_instance_once(start_api, pg_url):
    a = await start_api(pg_url)
    b = await start_api(pg_url)
    rows = await make_ready(a.store, 40)
    results = await asyncio.gather(*((a if i % 2 else b).lease(wait_s=0) for i in range(500)))
    got = [doc["instance_id"] for status, doc in results if status == 201]
    assert sorted(got) == sorted(r.id for r in rows)  # the lease count = instances ready
    assert sum(1 for status, _ in results if status == 503) == 460
    for row in rows:
        history = [t.to_state for t in await a.store.history(row.id)]
        assert history.count(State.LEASED) == 1


async def test_a_request_waiting_on_one_replica_is_served_when_the_leader_readies_one(
    start_api, pg_url
):
    standby = await start_api(pg_url)
    leader = await start_api(pg_url)
    waiting = asyncio.ensure_future(standby.lease(wait_s=20))
    await asyncio.sleep(0.5)
    assert not waiting.done()  # nothing ready: it waits
    # the leader (another process's store) makes one ready, with its standby key
    (row,) = await make_ready(leader.store, 1)
    # served by the standby's poll of the store (no event crosses processes): without it the
    # request would end with its queue position when its wait runs out
    status, doc = await asyncio.wait_for(waiting, 30)
    assert status == 201 and doc["instance_id"] == row.id
