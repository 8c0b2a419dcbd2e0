"""The Vast.ai double behaves as reference/fleet.md §1 says the real API does.

These tests speak plain HTTP to the double (no provider code), so a provider test that passes
against the double passes against the behaviour written down here.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from vastdouble import OCI_MESSAGE, Timing, VastDouble


@pytest.fixture
async def double() -> AsyncIterator[VastDouble]:
    d = VastDouble(manual_clock=True, timing=Timing(scheduling=10, loading=20, detour_after=30))
    await d.start()
    try:
        yield d
    finally:
        await d.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        # aiohttp re-sends a PUT once, silently, when the connection drops (PUT counts as
        # idempotent); these tests must see every drop
        s._retry_connection = False
        yield s


async def call(
    http: aiohttp.ClientSession,
    d: VastDouble,
    method: str,
    path: str,
    body: Any = None,
    *,
    params: dict[str, Any] | None = None,
    auth: str = "bearer",
) -> tuple[int, Any, aiohttp.typedefs.LooseHeaders]:
    headers = {"Authorization": f"Bearer {d.api_key}"} if auth == "bearer" else {}
    query = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (params or {}).items()}
    if auth == "query":
        query["api_key"] = d.api_key
    async with http.request(method, d.url + path, json=body, params=query, headers=headers) as resp:
        text = await resp.text()
        try:
            data = json.loads(text)
        except ValueError:
            data = text
        return resp.status, data, resp.headers


async def create(http, d, offer_id, label="comfyfleet-p-0123456789ab", **body) -> int:
    payload = {"client_id": "me", "image": "vastai/pytorch:latest", "disk": 40, "label": label}
    payload.update(body)
    status, data, _ = await call(http, d, "PUT", f"/api/v0/asks/{offer_id}/", payload)
    assert status == 200, data
    return data["new_contract"]


# --- auth ----------------------------------------------------------------------------------


async def test_bearer_and_query_key_are_accepted_anything_else_is_401(double, http):
    assert (await call(http, double, "GET", "/api/v1/instances/"))[0] == 200
    assert (await call(http, double, "GET", "/api/v1/instances/", auth="query"))[0] == 200
    assert (await call(http, double, "GET", "/api/v1/instances/", auth="none"))[0] == 401
    async with http.get(
        double.url + "/api/v1/instances/", headers={"Authorization": "Bearer wrong"}
    ) as resp:
        assert resp.status == 401
    assert [r.auth for r in double.requests] == ["bearer", "query", "none", "bad"]


# --- search --------------------------------------------------------------------------------


async def test_search_applies_operators_order_and_limit(double, http):
    cheap = double.add_offer(gpu_name="RTX 3090", dph_base=0.2, score=50)
    fast = double.add_offer(gpu_name="RTX 4090", dph_base=0.5, score=90)
    double.add_offer(gpu_name="RTX 4090", dph_base=0.9, score=95)  # too expensive
    a100 = double.add_offer(gpu_name="A100", dph_base=0.3)  # wrong GPU
    double.add_offer(gpu_name="RTX 4090", dph_base=0.3, reliability2=0.5)  # unreliable
    double.add_offer(gpu_name="RTX 4090", dph_base=0.3, verified=False)
    query = {
        "gpu_name": {"in": ["RTX 4090", "RTX 3090"]},
        "dph_total": {"lte": 0.6},
        "reliability2": {"gte": 0.98},
        "verified": {"eq": True},
        "num_gpus": {"eq": 1},
        "order": [["score", "desc"]],
        "type": "on-demand",
        "allocated_storage": 40,
    }
    status, data, _ = await call(http, double, "POST", "/api/v0/bundles/", query)
    assert status == 200
    assert [o["id"] for o in data["offers"]] == [fast.id, cheap.id]
    # dph_total includes storage at the allocated disk: $/GB/month × GB / 730 h
    assert data["offers"][0]["dph_total"] == pytest.approx(0.5 + 0.15 * 40 / 730, abs=1e-6)
    status, data, _ = await call(
        http, double, "POST", "/api/v0/bundles", {**query, "limit": 1, "type": "ondemand"}
    )
    assert status == 200 and [o["id"] for o in data["offers"]] == [fast.id]
    status, data, _ = await call(
        http, double, "PUT", "/api/v0/search/asks/", {"select_cols": ["*"], "q": query}
    )
    assert [o["id"] for o in data["offers"]] == [fast.id, cheap.id]
    for op, value, expect in [
        ("neq", "RTX 3090", {fast.id, a100.id}),
        ("notin", ["RTX 4090"], {cheap.id, a100.id}),
        ("eq", "RTX 3090", {cheap.id}),
    ]:
        q = {**query, "gpu_name": {op: value}}
        ids = {
            o["id"] for o in (await call(http, double, "POST", "/api/v0/bundles/", q))[1]["offers"]
        }
        assert ids == expect, op
    for lo, hi, expect in [(0.2, 0.3, {cheap.id}), (0.21, 0.6, {fast.id})]:
        q = {**query, "dph_base": {"gt": lo - 1e-9, "lt": hi}}
        ids = {
            o["id"] for o in (await call(http, double, "POST", "/api/v0/bundles/", q))[1]["offers"]
        }
        assert ids == expect


async def test_search_rejects_a_bad_type_and_an_unknown_field(double, http):
    assert (await call(http, double, "POST", "/api/v0/bundles/", {"type": "spot"}))[0] == 400
    status, data, _ = await call(http, double, "POST", "/api/v0/bundles/", {"gpu_nme": {"eq": 1}})
    assert status == 400 and data["error"] == "invalid_args"


async def test_a_rented_offer_leaves_search_and_a_second_rent_is_no_such_ask(double, http):
    offer = double.add_offer()
    await create(http, double, offer.id)
    _, data, _ = await call(http, double, "POST", "/api/v0/bundles/", {})
    assert offer.id not in [o["id"] for o in data["offers"]]
    body = {"image": "x", "disk": 10, "label": "l"}
    status, data, _ = await call(http, double, "PUT", f"/api/v0/asks/{offer.id}/", body)
    assert status == 404 and data["error"] == "no_such_ask" and "not available" in data["msg"]
    status, data, _ = await call(
        http, double, "PUT", f"/api/v0/asks/{offer.id}/", {**body, "cancel_unavail": True}
    )
    assert status == 410 and data["error"] == "no_such_ask"


async def test_create_validates_its_body(double, http):
    offer = double.add_offer()
    for bad in [
        {"image": "x", "disk": 4},
        {"image": "", "disk": 10},
        {"image": "x", "disk": 10, "label": "l" * 257},
        {"image": "x", "disk": 10, "onstart": "x" * 4049},
        {"image": "x", "disk": 10, "env": {"K": "v" * 257}},
        {"image": "x", "disk": 10, "price": 500},
    ]:
        status, data, _ = await call(http, double, "PUT", f"/api/v0/asks/{offer.id}/", bad)
        assert status == 400 and data["error"] == "invalid_args", bad
    assert double.live() == []


async def test_create_answers_the_contract_and_a_per_instance_key(double, http):
    offer = double.add_offer(dph_base=0.4)
    body = {
        "image": "vastai/pytorch:latest",
        "disk": 40,
        "label": "comfyfleet-p-0123456789ab",
        "env": {"COMFYFLEET_POOL": "p", "-p 8188:8188": "1"},
        "onstart": "echo hi",
    }
    status, data, _ = await call(http, double, "PUT", f"/api/v0/asks/{offer.id}/", body)
    assert status == 200 and data["success"] is True
    inst = double.instances[data["new_contract"]]
    assert data["instance_api_key"] == inst.api_key and len(inst.api_key) == 64
    _, shown, _ = await call(http, double, "GET", f"/api/v0/instances/{inst.id}/")
    row = shown["instances"]
    assert row["label"] == "comfyfleet-p-0123456789ab"
    assert row["extra_env"] == [["COMFYFLEET_POOL", "p"]]  # docker options are not env
    assert row["onstart"] == "echo hi" and row["machine_id"] == offer.machine_id


# --- status machine ------------------------------------------------------------------------


async def status_of(http, d, iid) -> dict[str, Any] | None:
    _, data, _ = await call(http, d, "GET", f"/api/v0/instances/{iid}/", params={"owner": "me"})
    return data["instances"]


async def test_null_then_loading_then_running_with_ssh_only_once_running(double, http):
    iid = await create(http, double, double.add_offer().id)
    row = await status_of(http, double, iid)
    assert row["actual_status"] is None and row["ssh_port"] is None and row["ports"] is None
    double.advance(10)
    row = await status_of(http, double, iid)
    assert row["actual_status"] == "loading" and row["ssh_host"] is None
    double.advance(20)
    row = await status_of(http, double, iid)
    assert row["actual_status"] == "running"
    assert row["ssh_host"].endswith(".vast.ai") and isinstance(row["ssh_port"], int)
    assert row["ports"] is None  # "ports may be null even when running"
    double.set_ssh(iid, "127.0.0.1", 2222)
    row = await status_of(http, double, iid)
    assert (row["ssh_host"], row["ssh_port"]) == ("127.0.0.1", 2222)


@pytest.mark.parametrize(
    ("detour", "at", "expect"),
    [
        ("stuck_loading", 10_000, ("loading", "running", "running", "running")),
        ("exited", 30, ("exited", "running", "running", "running")),
        ("unknown", 30, ("unknown", "running", "running", "running")),
        ("offline", 60, ("offline", "running", "running", "running")),
        ("oci", 10, ("created", "running", "running", "running")),
        ("outbid", 60, ("stopped", "stopped", "stopped", "stopped")),
    ],
)
async def test_detours(double, http, detour, at, expect):
    iid = await create(http, double, double.add_offer(detour=detour).id)
    double.advance(at)
    row = await status_of(http, double, iid)
    got = (row["actual_status"], row["intended_status"], row["cur_state"], row["next_state"])
    assert got == expect
    if detour == "oci":
        assert row["status_msg"] == OCI_MESSAGE and "OCI runtime create failed" in OCI_MESSAGE


async def test_next_detours_apply_in_order_before_the_offers_own(double, http):
    double.next_detours = ["exited"]
    a = await create(http, double, double.add_offer().id)
    b = await create(http, double, double.add_offer().id)
    double.advance(30)
    assert double.status_of(a) == "exited" and double.status_of(b) == "running"


async def test_an_unschedulable_offer_leaves_a_stopped_instance_unless_cancel_unavail(double, http):
    offer = double.add_offer(unschedulable=True)
    body = {"image": "x", "disk": 10, "label": "l", "cancel_unavail": True}
    status, data, _ = await call(http, double, "PUT", f"/api/v0/asks/{offer.id}/", body)
    assert status == 410 and double.live() == []
    body["cancel_unavail"] = False
    status, data, _ = await call(http, double, "PUT", f"/api/v0/asks/{offer.id}/", body)
    assert status == 200 and double.status_of(data["new_contract"]) == "stopped"
    double.advance(3600)
    assert double.spend() > 0  # a stopped instance still pays for its disk


# --- listing ---------------------------------------------------------------------------------


async def test_v1_pages_by_25_with_next_token_and_label_filters(double, http):
    offers = double.add_offers(60)
    ours = [
        await create(http, double, o.id, label=f"comfyfleet-p-{i:012x}")
        for i, o in enumerate(offers[:55])
    ]
    for o in offers[55:]:
        await create(http, double, o.id, label="other")
    double.add_foreign(label=None)
    seen: list[int] = []
    token = None
    pages = 0
    while True:
        params: dict[str, Any] = {
            "order_by": [{"col": "id", "dir": "asc"}],
            "limit": 25,
            "select_filters": {"label": {"neq": "other"}},
        }
        if token:
            params["after_token"] = token
        status, data, _ = await call(http, double, "GET", "/api/v1/instances/", params=params)
        assert status == 200
        pages += 1
        assert len(data["instances"]) <= 25
        seen += [r["id"] for r in data["instances"]]
        token = data["next_token"]
        if not token:
            break
    assert pages == 3 and seen == ours  # neq drops "other" and, SQL-like, the unlabelled one
    assert data["label_counts"]["other"] == 5 and data["label_counts"][""] == 1
    assert data["total_instances"] == 61
    _, data, _ = await call(
        http,
        double,
        "GET",
        "/api/v1/instances/",
        params={"select_filters": {"label": {"in": ["other", "comfyfleet-p-000000000001"]}}},
    )
    assert len(data["instances"]) == 6
    _, data, _ = await call(
        http, double, "GET", "/api/v1/instances", params={"select_filters": {"label": {"eq": ""}}}
    )
    assert [r["label"] for r in data["instances"]] == [None]
    _, data, _ = await call(http, double, "GET", "/api/v1/instances/", params={"limit": 0})
    assert len(data["instances"]) == 5  # limit ≤ 0 → 5
    _, data, _ = await call(http, double, "GET", "/api/v1/instances/", params={"limit": 100})
    assert len(data["instances"]) == 25  # capped
    _, data, _ = await call(http, double, "GET", "/api/v0/instances/", params={"owner": "me"})
    assert len(data["instances"]) == 61  # v0: everything, unpaginated


async def test_v1_refuses_computed_filters_and_bad_tokens(double, http):
    status, data, _ = await call(
        http,
        double,
        "GET",
        "/api/v1/instances/",
        params={"select_filters": {"dph_total": {"lt": 1}}},
    )
    assert status == 400
    status, data, _ = await call(
        http, double, "GET", "/api/v1/instances/", params={"after_token": "garbage!"}
    )
    assert status == 400 and data["error"] == "invalid_token"


async def test_show_is_null_when_gone_and_destroy_is_idempotent_by_error(double, http):
    iid = await create(http, double, double.add_offer().id)
    status, data, _ = await call(http, double, "DELETE", f"/api/v0/instances/{iid}/", {})
    assert status == 200 and data == {"success": True}
    assert await status_of(http, double, iid) is None
    status, data, _ = await call(http, double, "DELETE", f"/api/v0/instances/{iid}/", {})
    assert status == 404 and data["error"] == "no_such_instance"
    assert await status_of(http, double, 99) is None


async def test_kill_makes_an_instance_vanish(double, http):
    iid = await create(http, double, double.add_offer().id)
    double.kill(iid)
    assert await status_of(http, double, iid) is None
    _, data, _ = await call(http, double, "GET", "/api/v1/instances/")
    assert data["instances"] == []


async def test_manage_label_and_state(double, http):
    iid = await create(http, double, double.add_offer().id)
    double.advance(30)
    assert (await call(http, double, "PUT", f"/api/v0/instances/{iid}/", {"label": "x"}))[0] == 200
    assert (await status_of(http, double, iid))["label"] == "x"
    await call(http, double, "PUT", f"/api/v0/instances/{iid}/", {"state": "stopped"})
    assert double.status_of(iid) == "stopped"
    await call(http, double, "PUT", f"/api/v0/instances/{iid}/", {"state": "running"})
    double.advance(30)
    assert double.status_of(iid) == "running"


async def test_request_logs_result_url_404s_a_few_polls_then_answers(double, http):
    iid = await create(http, double, double.add_offer().id)
    status, data, _ = await call(http, double, "PUT", f"/api/v0/instances/request_logs/{iid}/", {})
    assert status == 200
    codes = []
    for _ in range(5):
        async with http.get(data["result_url"]) as resp:  # no auth: an S3 URL
            codes.append(resp.status)
    assert codes == [404, 404, 404, 200, 200]


async def test_attach_ssh_key(double, http):
    iid = await create(http, double, double.add_offer().id)
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK0 test"
    status, _, _ = await call(
        http, double, "POST", f"/api/v0/instances/{iid}/ssh/", {"ssh_key": key}
    )
    assert status == 200 and double.instances[iid].ssh_keys == [key]


# --- ledger and counters -----------------------------------------------------------------------


async def test_ledger_storage_in_every_state_but_offline_compute_only_while_running(double, http):
    offer = double.add_offer(dph_base=0.36, storage_cost=0.73, detour="offline")
    iid = await create(http, double, offer.id, disk=100)  # storage: 0.73 × 100 / 730 = $0.1/h
    storage, compute = 0.1, 0.36
    double.advance(30)  # 10 s scheduling + 20 s loading: storage only
    assert double.spend(iid) == pytest.approx(storage * 30 / 3600)
    double.advance(30)  # running for 30 s
    assert double.spend(iid) == pytest.approx((storage * 60 + compute * 30) / 3600)
    assert double.spend_rate() == pytest.approx(0.0)  # now offline: nothing bills
    double.advance(3600)
    assert double.spend(iid) == pytest.approx((storage * 60 + compute * 30) / 3600)
    double.set_status(iid, "running")
    double.advance(3600)
    status, _, _ = await call(http, double, "DELETE", f"/api/v0/instances/{iid}/", {})
    assert status == 200
    billed = double.spend(iid)
    assert billed == pytest.approx((storage * 60 + compute * 30) / 3600 + storage + compute)
    double.advance(3600)
    assert double.spend() == pytest.approx(billed)  # destroyed: billing stopped


async def test_max_alive_counts_api_created_instances_at_once(double, http):
    a = await create(http, double, double.add_offer().id)
    b = await create(http, double, double.add_offer().id)
    await call(http, double, "DELETE", f"/api/v0/instances/{a}/", {})
    await create(http, double, double.add_offer().id)
    double.add_foreign(label="comfyfleet-p-ffffffffffff")
    await call(http, double, "DELETE", f"/api/v0/instances/{b}/", {})
    assert double.max_alive == 2 and len(double.live()) == 1


# --- faults ------------------------------------------------------------------------------------


async def test_429_has_no_retry_after_in_text_and_json_forms(double, http):
    double.faults.next("list", "429_text")
    double.faults.next("list", "429_json")
    status, data, headers = await call(http, double, "GET", "/api/v1/instances/")
    assert status == 429 and "Retry-After" not in headers
    assert isinstance(data, str) and data.startswith("API requests too frequent")
    status, data, headers = await call(http, double, "GET", "/api/v1/instances/")
    assert status == 429 and "Retry-After" not in headers and "too frequent" in data["detail"]
    assert (await call(http, double, "GET", "/api/v1/instances/"))[0] == 200


async def test_5xx_blips(double, http):
    double.faults.next("show", "502")
    double.faults.next("show", "503")
    assert (await call(http, double, "GET", "/api/v0/instances/1/"))[0] == 502
    assert (await call(http, double, "GET", "/api/v0/instances/1/"))[0] == 503
    assert (await call(http, double, "GET", "/api/v0/instances/1/"))[0] == 200


async def test_lost_answer_happened_and_drop_did_not(double, http):
    offer = double.add_offer()
    double.faults.next("create", "drop")
    with pytest.raises(aiohttp.ClientError):
        await call(http, double, "PUT", f"/api/v0/asks/{offer.id}/", {"image": "x", "disk": 10})
    assert double.live() == []
    double.faults.next("create", "lost")
    with pytest.raises(aiohttp.ClientError):
        await call(http, double, "PUT", f"/api/v0/asks/{offer.id}/", {"image": "x", "disk": 10})
    assert len(double.live()) == 1  # the instance exists though the answer never came
    assert [r.status for r in double.requests_to("create")] == [599, 599]


async def test_error_but_created_names_the_stopped_billing_instance(double, http):
    offer = double.add_offer()
    double.faults.next("create", "error_but_created")
    status, data, _ = await call(
        http, double, "PUT", f"/api/v0/asks/{offer.id}/", {"image": "x", "disk": 10}
    )
    assert status == 400 and data["success"] is False
    assert double.status_of(data["new_contract"]) == "stopped"
    double.advance(100)
    assert double.spend(data["new_contract"]) > 0


async def test_per_endpoint_min_interval(double, http):
    double.min_interval = {"show": 60.0}
    double.rate_limit_body = "json"
    assert (await call(http, double, "GET", "/api/v0/instances/1/"))[0] == 200
    status, data, _ = await call(http, double, "GET", "/api/v0/instances/1/")
    assert status == 429 and "threshold=60" in data["detail"]
    assert (await call(http, double, "GET", "/api/v1/instances/"))[0] == 200  # other endpoint


async def test_random_faults_are_seeded(double, http):
    double.faults.rate("list", "500", 0.5, seed=7)
    first = [(await call(http, double, "GET", "/api/v1/instances/"))[0] for _ in range(20)]
    double.faults.clear()
    double.faults.rate("list", "500", 0.5, seed=7)
    second = [(await call(http, double, "GET", "/api/v1/instances/"))[0] for _ in range(20)]
    assert first == second and set(first) == {200, 500}


def test_runs_in_a_thread_for_sync_callers():
    d = VastDouble(timing=Timing(scheduling=0.05, loading=0.05))
    d.start_in_thread()
    try:
        offer = d.add_offer()
        req = urllib.request.Request(
            f"{d.url}/api/v0/asks/{offer.id}/",
            data=json.dumps({"image": "x", "disk": 10, "label": "l"}).encode(),
            method="PUT",
            headers={"Authorization": f"Bearer {d.api_key}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            iid = json.load(resp)["new_contract"]
        d.wait_for_requests("create", 1)
        # real time drives the status machine here
        end = time.monotonic() + 5
        while d.status_of(iid) != "running":
            assert time.monotonic() < end
            time.sleep(0.01)
    finally:
        d.stop_thread()


async def test_hang_acts_after_the_wait_and_hang_after_acts_before_it(double, http):
    offer = double.add_offer()
    body = {"image": "x", "disk": 10, "label": "l"}
    short = aiohttp.ClientTimeout(total=0.3)
    double.faults.next("create", "hang_after", seconds=0.6)
    with pytest.raises(TimeoutError):
        async with http.put(
            f"{double.url}/api/v0/asks/{offer.id}/",
            json=body,
            headers={"Authorization": f"Bearer {double.api_key}"},
            timeout=short,
        ) as resp:
            await resp.read()
    assert len(double.live()) == 1  # created before the (never received) answer
    other = double.add_offer()
    double.faults.next("create", "hang", seconds=0.2)
    status, _, _ = await call(http, double, "PUT", f"/api/v0/asks/{other.id}/", body)
    assert status == 200 and len(double.live()) == 2


async def test_a_client_that_gives_up_during_a_hang_still_gets_the_action_done(double, http):
    offer = double.add_offer()
    double.faults.next("create", "hang", seconds=0.5)
    with pytest.raises(TimeoutError):
        async with http.put(
            f"{double.url}/api/v0/asks/{offer.id}/",
            json={"image": "x", "disk": 10, "label": "l"},
            headers={"Authorization": f"Bearer {double.api_key}"},
            timeout=aiohttp.ClientTimeout(total=0.1),
        ) as resp:
            await resp.read()
    # like a real server, the request that arrived is carried out though its client left
    end = time.monotonic() + 5
    while not double.live():
        assert time.monotonic() < end, "the create never happened"
        await asyncio.sleep(0.02)
