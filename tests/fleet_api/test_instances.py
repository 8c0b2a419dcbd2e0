"""GET /v1/instances (shape, leases, progress and log from the log store), DELETE of one
instance through the destroy path, the log endpoint, /metrics in the Prometheus format."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from comfyfleet.fleet.states import State

from .conftest import make_ready

FIELDS = {"id", "provider", "provider_id", "state", "phase", "bytes_done", "bytes_total",
          "speed", "gpu", "dph", "age_s", "lease_id", "log_tail"}  # fmt: skip


async def test_instances_lists_every_live_instance_with_its_lease(start_api, store_url):
    api = await start_api(store_url)
    a, b = await make_ready(api.store, 2)
    _, lease = await api.lease(instance_id=b.id)
    async with api.http.get(f"{api.url}/v1/instances", headers=api.auth()) as r:
        assert r.status == 200
        doc = await r.json()
    by_id = {i["id"]: i for i in doc["instances"]}
    assert set(by_id) == {a.id, b.id}
    for item in by_id.values():
        assert set(item) == FIELDS
        assert item["provider"] == "vast" and item["gpu"] == "RTX 4090" and item["dph"] == 0.5
        assert isinstance(item["log_tail"], list) and item["age_s"] >= 0
    assert by_id[a.id]["state"] == "ready" and by_id[a.id]["lease_id"] is None
    assert by_id[b.id]["state"] == "leased" and by_id[b.id]["lease_id"] == lease["lease_id"]


async def test_delete_instance_ends_its_lease_and_destroys_it(start_api, sqlite_url):
    api = await start_api(sqlite_url)
    [row] = await make_ready(api.store, 1)
    _, lease = await api.lease()
    async with api.http.delete(f"{api.url}/v1/instances/{row.id}", headers=api.auth()) as r:
        assert r.status == 200
    assert api.destroyed == [(row.id, "destroyed by the operator")]
    async with api.http.get(f"{api.url}/v1/leases/{lease['lease_id']}",
                            headers=api.auth()) as r:  # fmt: skip
        assert (await r.json())["state"] == "released"
    async with api.http.delete(f"{api.url}/v1/instances/nosuch", headers=api.auth()) as r:
        assert r.status == 404


async def test_the_log_endpoint_pages_through_the_stored_log(start_api, sqlite_url):
    api = await start_api(sqlite_url)
    [row] = await make_ready(api.store, 1)
    async with api.http.get(f"{api.url}/v1/instances/{row.id}/log?from=0",
                            headers=api.auth()) as r:  # fmt: skip
        assert r.status == 200
        doc = await r.json()
    assert doc == {"from": 0, "next": 0, "text": ""}  # nothing logged for this row
    async with api.http.get(f"{api.url}/v1/instances/{row.id}/log?from=-1",
                            headers=api.auth()) as r:  # fmt: skip
        assert r.status == 422


async def test_metrics_count_instances_spend_and_lease_waits(start_api, sqlite_url):
    api = await start_api(sqlite_url)
    await make_ready(api.store, 3)
    await api.lease()
    await api.lease()
    await api.lease()
    status, _ = await api.lease()
    assert status == 503
    async with api.http.get(f"{api.url}/metrics", headers=api.auth()) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }
    assert samples[("comfyfleet_instances", (("state", State.LEASED.value),))] == 3
    assert samples[("comfyfleet_instances", (("state", State.READY.value),))] == 0
    assert samples[("comfyfleet_spend_per_hour_dollars", ())] == 1.5
    assert samples[("comfyfleet_lease_wait_seconds_count", ())] == 3
    assert samples[("comfyfleet_leases_total", (("outcome", "timeout"),))] == 1
    for name in ("comfyfleet_time_to_ready_seconds_count", "comfyfleet_orphans_destroyed_total"):
        assert (name, ()) in samples
    assert "comfyfleet_provider_errors" in text
