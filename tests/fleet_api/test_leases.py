"""Leases over HTTP on both stores: warm lease, 503 with the queue position, waiters served
first-come first-served, expiry without renewal, 200 concurrent requests, the one-transaction
take racing across store connections."""

from __future__ import annotations

import asyncio
import time

from comfyfleet.fleet import leases
from comfyfleet.fleet.states import State
from comfyfleet.fleet.store import Store

from .conftest import make_ready


async def test_a_warm_lease_arrives_at_once_with_ssh_key_and_tunnel(start_api, store_url):
    api = await start_api(store_url, comfyui_port=lambda row: 18188)
    [row] = await make_ready(api.store, 1, ssh=("198.51.100.4", 40022, "root"), ctx=api.ctx)
    status, doc = await api.lease(wait_s=0)
    assert status == 201
    assert doc["instance_id"] == row.id
    assert doc["ssh"] == {"host": "198.51.100.4", "port": 40022, "user": "root"}
    assert doc["private_key"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert doc["tunnel"].startswith("ssh -N -L 18188:127.0.0.1:18188 ")
    assert "-p 40022 root@198.51.100.4" in doc["tunnel"]
    assert doc["expires_at"].endswith("Z") and doc["lease_token"]
    # the store: leased with this lease, the key line's comment names instance and lease
    after = await api.store.get(row.id)
    assert after.state is State.LEASED and after.lease_id == doc["lease_id"]
    line = await leases.key_line(api.store, doc["lease_id"])
    assert line.endswith(f":{row.id}:{doc['lease_id']}")
    [added] = api.ctx.keys.added
    assert added == line
    # the token is stored as a digest only
    _lease, digest = await leases.get(api.store, doc["lease_id"])
    assert doc["lease_token"] not in digest and leases.token_matches(doc["lease_token"], digest)
    # the next request finds nothing ready
    status, doc2 = await api.lease(wait_s=0)
    assert status == 503 and doc2["queue_position"] == 1


async def test_waiters_get_503_with_their_position_and_are_served_in_order(start_api, store_url):
    api = await start_api(store_url)
    first = asyncio.create_task(api.lease(wait_s=20))
    await _until(lambda: len(api.ctx.broker.waiters) == 1)
    second = asyncio.create_task(api.lease(wait_s=20))
    await _until(lambda: len(api.ctx.broker.waiters) == 2)
    status, doc = await api.lease(wait_s=0.3)  # too short: third in the queue
    assert status == 503 and doc["queue_position"] == 3
    # an instance turns ready (no wake-up call: the broker finds it in the store)
    [a] = await make_ready(api.store, 1)
    status, got = await first
    assert status == 201 and got["instance_id"] == a.id
    assert not second.done()
    [b] = await make_ready(api.store, 1)
    status, got = await second
    assert status == 201 and got["instance_id"] == b.id


async def test_a_lease_not_renewed_within_lease_ttl_is_released(start_api, store_url):
    api = await start_api(store_url, lease_ttl=0.6)
    rows = await make_ready(api.store, 2, ctx=api.ctx)
    _, kept = await api.lease()
    _, lapsed = await api.lease()
    token = {"Authorization": f"Bearer {kept['lease_token']}"}
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:  # renew one of them for longer than its ttl
        async with api.http.post(
            f"{api.url}/v1/leases/{kept['lease_id']}/renew", headers=token
        ) as r:
            assert r.status == 200
        await asyncio.sleep(0.1)
    lease, _ = await leases.get(api.store, lapsed["lease_id"])
    assert lease.state == "expired" and "lease_ttl" in lease.ended_reason
    lease, _ = await leases.get(api.store, kept["lease_id"])
    assert lease.state == "active"
    row = await api.store.get(lapsed["instance_id"])
    assert row.state is State.RELEASING
    assert [r for r, _ in api.released] == [lapsed["instance_id"]]
    # its key line is gone from the instance; the renewed one's is still there
    by_id = {r.id: r for r in rows}
    lapsed_file = api.ctx.keys.path(by_id[lapsed["instance_id"]]).read_text()
    kept_file = api.ctx.keys.path(by_id[kept["instance_id"]]).read_text()
    assert lapsed["lease_id"] not in lapsed_file and kept["lease_id"] in kept_file
    async with api.http.post(f"{api.url}/v1/leases/{lapsed['lease_id']}/renew",
                             headers=api.auth()) as r:  # fmt: skip
        assert r.status == 409


async def test_200_concurrent_lease_requests_never_lease_one_instance_twice(start_api, store_url):
    api = await start_api(store_url)
    rows = await make_ready(api.store, 30)
    results = await asyncio.gather(*(api.lease(wait_s=0) for _ in range(200)))
    got = [doc["instance_id"] for status, doc in results if status == 201]
    assert sorted(got) == sorted(r.id for r in rows)  # each exactly once
    assert sum(1 for status, _ in results if status == 503) == 170
    for row in rows:
        after = await api.store.get(row.id)
        assert after.state is State.LEASED
        assert [t.to_state for t in await api.store.history(row.id)].count(State.LEASED) == 1


async def test_the_take_is_one_transaction_racing_across_connections(store_url):
    """Four stores (four connection pools, as four replicas would have) take at once."""
    stores = [await Store.open(store_url, pool="sdxl") for _ in range(4)]
    try:
        rows = await make_ready(stores[0], 12)

        async def take(store: Store):
            return await leases.take(store, ttl=60, now=time.time())

        taken = await asyncio.gather(
            *(take(stores[i % 4]) for i in range(48)), return_exceptions=True
        )
        # SQLite: the single writer serialises them; PostgreSQL: SKIP LOCKED; neither fails
        errors = [t for t in taken if isinstance(t, BaseException)]
        assert not errors, errors[:1]
        won = [t.lease.instance_id for t in taken if t is not None]
        assert sorted(won) == sorted(r.id for r in rows)
        assert len({t.lease.id for t in taken if t is not None}) == 12
    finally:
        for s in stores:
            await s.close()


async def test_a_lease_for_one_instance_waits_for_that_one(start_api, store_url):
    api = await start_api(store_url)
    _a, b = await make_ready(api.store, 2)
    status, doc = await api.lease(instance_id=b.id)
    assert status == 201 and doc["instance_id"] == b.id
    status, doc = await api.lease(instance_id=b.id, wait_s=0.2)
    assert status == 503
    status, doc = await api.lease(instance_id="nosuch")
    assert status == 404
    async with api.http.post(f"{api.url}/v1/leases", json={"wait_s": -1},
                             headers=api.auth()) as r:  # fmt: skip
        assert r.status == 422 and (await r.json())["detail"][0]["loc"] == ["body", "wait_s"]


async def _until(predicate, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.01)


async def test_the_leading_replica_attaches_keys_to_ready_instances_unasked(start_api, sqlite_url):
    api = await start_api(sqlite_url, attaches_keys=lambda: True)
    [row] = await make_ready(api.store, 1, key=False)
    deadline = time.monotonic() + 10
    while await leases.ready_without_key(api.store):  # attached and recorded, unasked
        assert time.monotonic() < deadline, "no key was attached"
        await asyncio.sleep(0.02)
    assert len(api.ctx.keys.added) == 1
    assert api.ctx.keys.path(row).read_text().count(f":{row.id}:") == 1
    status, doc = await api.lease()
    assert status == 201 and api.ctx.keys.added[0].endswith(doc["lease_id"])
