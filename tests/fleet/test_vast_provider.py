"""The Vast.ai provider against the Vast double: requests as the official client sends them,
every answer of reference/fleet.md §1 mapped to the fleet's errors."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from vastdouble import Timing, VastDouble

from comfyfleet.errors import UsageError
from comfyfleet.fleet.errors import (
    CreateFailed,
    OfferUnavailable,
    ProviderAuthError,
    ProviderError,
    ProviderRateLimited,
    ProviderUnavailable,
    ProviderUnreachable,
)
from comfyfleet.fleet.providers.base import Offer, Provider, ProviderInstance
from comfyfleet.fleet.providers.blocklist import Blocklist
from comfyfleet.fleet.providers.vast import VastProvider, classify_status, key_onstart

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDk3b2x0ZXN0a2V5Zm9ydGhlcG9vbA pool@control"
OFFERS = {
    "gpu_names": ["RTX 4090", "RTX 3090"],
    "num_gpus": 1,
    "min_gpu_ram_gb": 24,
    "max_dph": 0.6,
    "min_reliability": 0.98,
    "min_inet_down_mbps": 500,
    "min_cuda": 12.4,
    "verified": True,
}


class FakeClock:
    """A clock the blocklist reads (the double has its own)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
async def double() -> AsyncIterator[VastDouble]:
    d = VastDouble(manual_clock=True, timing=Timing(scheduling=10, loading=20, detour_after=30))
    await d.start()
    try:
        yield d
    finally:
        await d.stop()


@pytest.fixture
async def make(double: VastDouble) -> AsyncIterator[Callable[..., VastProvider]]:
    made: list[VastProvider] = []

    def factory(**kw: Any) -> VastProvider:
        args: dict[str, Any] = {
            "pool": "sdxl",
            "offers": OFFERS,
            "image": "vastai/pytorch:latest",
            "disk_gb": 80,
            "min_interval": {},
            "call_budget": 10.0,
        }
        args.update(kw)
        api_url = args.pop("api_url", double.url)
        api_key = args.pop("api_key", double.api_key)
        p = VastProvider(api_url, api_key, **args)
        made.append(p)
        return p

    yield factory
    for p in made:
        await p.aclose()


@pytest.fixture
def provider(make: Callable[..., VastProvider]) -> VastProvider:
    return make()


def label(n: int = 0, pool: str = "sdxl") -> str:
    return f"comfyfleet-{pool}-{n:012x}"


async def rent(provider: VastProvider, double: VastDouble, n: int = 0, **offer: Any) -> str:
    o = double.add_offer(**offer)
    created = await provider.create(
        Offer(str(o.id), str(o.machine_id), o.gpu_name, 1, 0.5),
        label=label(n),
        env={"FOO": "bar"},
        onstart="echo started",
        ssh_public_key=KEY,
    )
    return created.provider_id


def test_satisfies_the_provider_protocol(provider):
    assert isinstance(provider, Provider) and provider.kind == "vast"


# --- auth -----------------------------------------------------------------------------------------


async def test_every_request_carries_a_bearer_key_and_no_key_in_the_url(provider, double):
    await provider.list_instances()
    await provider.search_offers()
    assert [r.auth for r in double.requests] == ["bearer", "bearer"]
    assert all("api_key" not in r.query for r in double.requests)


async def test_a_wrong_key_is_an_auth_error_that_does_not_print_the_key(make):
    provider = make(api_key="not-the-key-0123456789")
    with pytest.raises(ProviderAuthError) as err:
        await provider.list_instances()
    assert err.value.exit_code == 2 and "not-the-key" not in str(err.value)
    assert "VAST_API_KEY" in err.value.hint


def test_a_missing_key_is_an_auth_error_before_any_request(double):
    with pytest.raises(ProviderAuthError, match="VAST_API_KEY"):
        VastProvider(double.url, "", pool="p", offers={}, image="i", disk_gb=10)


async def test_an_unreachable_api_is_provider_unreachable(make):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: connection refused
    provider = make(api_url=f"http://127.0.0.1:{port}", call_budget=0.5)
    with pytest.raises(ProviderUnreachable) as err:
        await provider.list_instances()
    assert err.value.exit_code == 2 and "api_url" in err.value.hint


# --- search ---------------------------------------------------------------------------------------


async def test_search_sends_the_flat_query_built_from_the_offers_table(provider, double):
    await provider.search_offers()
    (req,) = double.requests_to("search")
    assert req.method == "POST" and req.path == "/api/v0/bundles/"
    q = req.body
    assert q["gpu_name"] == {"in": ["RTX 4090", "RTX 3090"]}
    assert q["num_gpus"] == {"eq": 1}
    assert q["gpu_ram"] == {"gte": 24000}  # MB
    assert q["dph_total"] == {"lte": 0.6}
    assert q["reliability"] == {"gte": 0.98}
    assert q["inet_down"] == {"gte": 500}
    assert q["cuda_max_good"] == {"gte": 12.4}
    assert q["verified"] == {"eq": True}
    assert q["rentable"] == {"eq": True} and q["rented"] == {"eq": False}
    assert q["disk_space"] == {"gte": 80} and q["allocated_storage"] == 80
    assert q["type"] == "on-demand"


async def test_search_returns_matching_offers_priced_with_our_disk(provider, double):
    good = double.add_offer(gpu_name="RTX 4090", dph_base=0.4, score=9)
    also = double.add_offer(gpu_name="RTX 3090", dph_base=0.3, score=5)
    double.add_offer(gpu_name="RTX 4090", dph_base=0.59)  # + storage at 80 GB: over 0.6
    double.add_offer(gpu_name="RTX 4090", gpu_ram=16000)
    double.add_offer(gpu_name="RTX 4090", cuda_max_good=12.0)
    double.add_offer(gpu_name="RTX 4090", inet_down=100)
    double.add_offer(gpu_name="RTX 4090", verified=False)
    double.add_offer(gpu_name="A100")
    offers = await provider.search_offers()
    assert [o.offer_id for o in offers] == [str(good.id), str(also.id)]  # score desc
    assert offers[0].machine_id == str(good.machine_id)
    assert offers[0].dph == pytest.approx(0.4 + 0.15 * 80 / 730, abs=1e-6)
    assert offers[0].gpu_name == "RTX 4090" and offers[0].num_gpus == 1


async def test_search_skips_blocked_machines_until_the_block_decays(make, double):
    clock = FakeClock()
    provider = make(blocklist=Blocklist(base=60, cap=600, forget_after=3600, clock=clock))
    a = double.add_offer(score=9)
    b = double.add_offer(score=5)
    provider.block(str(a.machine_id), "exited")
    assert [o.offer_id for o in await provider.search_offers()] == [str(b.id)]
    clock.t += 61
    assert [o.offer_id for o in await provider.search_offers()] == [str(a.id), str(b.id)]


def test_blocks_double_per_repeat_and_are_forgotten_after_a_quiet_spell():
    clock = FakeClock()
    bl = Blocklist(base=60, cap=200, forget_after=1000, clock=clock)
    assert bl.block("m", "exited") == 60
    clock.t += 61
    assert not bl.is_blocked("m")
    assert bl.block("m", "exited again") == 120 and bl.reason("m") == "exited again"
    clock.t += 121
    assert bl.block("m", "offline") == 200  # capped
    clock.t += 200 + 1000
    assert not bl.is_blocked("m")
    assert bl.block("m", "new trouble") == 60  # forgotten: starts over


# --- create ---------------------------------------------------------------------------------------


async def test_create_sends_what_the_official_client_sends_plus_our_marker(provider, double):
    o = double.add_offer()
    created = await provider.create(
        Offer(str(o.id), str(o.machine_id), o.gpu_name, 1, 0.5),
        label=label(1),
        env={"FOO": "bar"},
        onstart="echo started",
        ssh_public_key=KEY,
    )
    (req,) = double.requests_to("create")
    assert req.method == "PUT" and req.path == f"/api/v0/asks/{o.id}/"
    body = req.body
    assert body["cancel_unavail"] is True and body["client_id"] == "me"
    assert body["label"] == label(1) and body["image"] == "vastai/pytorch:latest"
    assert body["disk"] == 80
    assert body["env"] == {"FOO": "bar", "COMFYFLEET_POOL": "sdxl"}
    assert KEY.rsplit(" ", 1)[0] in body["onstart"] and body["onstart"].endswith("echo started")
    inst = double.instances[int(created.provider_id)]
    assert created.instance_api_key == inst.api_key
    assert inst.api_key not in repr(created)  # a secret: never in a repr or a log line


async def test_create_on_a_taken_offer_is_offer_unavailable(provider, double):
    await rent(provider, double)
    taken = next(iter(double.offers.values()))
    with pytest.raises(OfferUnavailable):
        await provider.create(
            Offer(str(taken.id), str(taken.machine_id), "", 1, 0.5),
            label=label(2),
            env={},
            onstart="",
            ssh_public_key=KEY,
        )
    assert double.requests_to("create")[-1].status == 410  # cancel_unavail: 410
    assert len(double.live()) == 1


async def test_an_unschedulable_offer_leaves_nothing_behind(provider, double):
    with pytest.raises(OfferUnavailable):
        await rent(provider, double, unschedulable=True)
    assert double.live() == []  # cancel_unavail: no stopped, billed leftover


async def test_error_but_created_names_the_instance_to_destroy(provider, double):
    double.faults.next("create", "error_but_created")
    with pytest.raises(CreateFailed) as err:
        await rent(provider, double)
    (inst,) = double.live()
    assert err.value.provider_id == str(inst.id)
    await provider.destroy(err.value.provider_id)
    assert double.live() == []


async def test_a_lost_create_answer_is_not_resent_and_is_found_by_label(provider, double):
    double.faults.next("create", "lost")
    with pytest.raises(ProviderUnavailable, match="may have happened"):
        await rent(provider, double, n=7)
    assert len(double.requests_to("create")) == 1  # never re-sent: it could rent twice
    listed = await provider.list_instances()
    assert [i.label for i in listed] == [label(7)]


async def test_a_create_that_times_out_after_acting_may_have_happened(make, double):
    provider = make(request_timeout=0.3)
    double.faults.next("create", "hang_after", seconds=0.6)
    with pytest.raises(ProviderUnavailable, match="may have happened"):
        await rent(provider, double, n=8)
    assert len(double.requests_to("create")) == 1
    assert [i.label for i in await provider.list_instances()] == [label(8)]


async def test_a_listing_that_times_out_is_retried(make, double):
    provider = make(request_timeout=0.3)
    await rent(provider, double, n=1)
    double.faults.next("list", "hang", seconds=0.6)
    assert [i.label for i in await provider.list_instances()] == [label(1)]
    assert len(double.requests_to("list")) == 2


@pytest.mark.parametrize("kind", ["500", "502", "503", "504"])
async def test_a_create_5xx_is_not_retried(provider, double, kind):
    double.faults.next("create", kind)
    with pytest.raises(ProviderUnavailable):
        await rent(provider, double)
    assert len(double.requests_to("create")) == 1


async def test_a_create_429_is_retried(provider, double):
    double.faults.next("create", "429_text")
    double.faults.next("create", "429_json")
    pid = await rent(provider, double)
    assert [r.status for r in double.requests_to("create")] == [429, 429, 200]
    assert double.instances[int(pid)].alive


async def test_an_invalid_create_is_create_failed_without_an_instance(make, double):
    provider = make(disk_gb=4)  # below Vast's minimum of 8
    with pytest.raises(CreateFailed) as err:
        await rent(provider, double)
    assert err.value.provider_id is None and "invalid_args" in str(err.value)
    assert double.live() == []


def test_onstart_refuses_a_key_that_could_break_out_of_the_script():
    with pytest.raises(UsageError):
        key_onstart("ssh-ed25519 AAAA'; rm -rf / #", "")
    with pytest.raises(UsageError, match="4048"):
        key_onstart(KEY, "x" * 4048)
    script = key_onstart(KEY, "echo hi")
    assert "authorized_keys" in script and script.endswith("echo hi")


# --- listing --------------------------------------------------------------------------------------


async def test_list_pages_through_everything_labelled_comfyfleet(provider, double):
    ids = [await rent(provider, double, n=i) for i in range(60)]
    double.add_foreign(label=None)
    double.add_foreign(label="someone-else")
    lookalike = double.add_foreign(label="comfyfleet-sdxl-xl-0123456789ab")
    listed = await provider.list_instances()
    assert [i.provider_id for i in listed] == [*ids, str(lookalike.id)]
    reqs = double.requests_to("list")
    assert len(reqs) >= 3  # 25 per page
    first = reqs[0]
    assert first.path == "/api/v1/instances/"
    assert json.loads(first.query["select_filters"]) == {"label": {"neq": ""}}
    assert json.loads(first.query["order_by"]) == [{"col": "id", "dir": "asc"}]
    assert "after_token" in reqs[1].query
    mine = listed[0]
    assert mine.pool_marker == "sdxl" and mine.label == label(0)
    assert listed[-1].pool_marker is None  # ownership (label AND marker) is the caller's


async def test_list_rides_out_429s_and_5xx_blips(provider, double):
    for _ in range(3):
        await rent(provider, double, n=_)
    double.faults.next("list", "429_text")
    double.faults.next("list", "503")
    double.faults.next("list", "429_json")
    double.faults.next("list", "lost")
    assert len(await provider.list_instances()) == 3
    assert [r.status for r in double.requests_to("list")] == [429, 503, 429, 599, 200]


async def test_an_html_page_instead_of_json_is_retried_for_reads_and_unknown_for_create(
    provider, double
):
    await rent(provider, double, n=1)
    double.faults.next("list", "html")
    assert len(await provider.list_instances()) == 1
    double.faults.next("create", "html")
    with pytest.raises(ProviderUnavailable, match="may have happened"):
        await rent(provider, double, n=2)
    assert len(double.requests_to("create")) == 2  # one per rent: never re-sent


async def test_list_raises_rate_limited_when_429s_outlast_the_budget(make, double):
    provider = make(call_budget=0.5)
    double.faults.rate("list", "429_text", 1.0)
    with pytest.raises(ProviderRateLimited):
        await provider.list_instances()
    double.faults.clear()
    double.faults.rate("list", "502", 1.0)
    with pytest.raises(ProviderUnavailable):
        await provider.list_instances()


async def test_a_failing_second_page_fails_the_whole_listing(make, double):
    provider = make(call_budget=0.3)
    ids = [await rent(provider, double, n=i) for i in range(30)]
    assert len(ids) == 30
    original = double.faults.take

    def second_page_fails(endpoint: str):
        if endpoint == "list" and len(double.requests_to("list")) > 1:
            from vastdouble import Fault

            return Fault("500")
        return original(endpoint)

    double.faults.take = second_page_fails  # type: ignore[method-assign]
    with pytest.raises(ProviderUnavailable):
        await provider.list_instances()  # a partial listing would look like 5 lost instances


# --- get and health -------------------------------------------------------------------------------


async def test_get_follows_the_status_machine_to_an_ssh_endpoint(provider, double):
    pid = await rent(provider, double)
    inst = await provider.get(pid)
    assert inst is not None and inst.status == "created" and inst.ssh is None
    assert provider.health(inst)[0] == "booting"
    double.advance(10)
    inst = await provider.get(pid)
    assert inst.status == "loading" and provider.health(inst)[0] == "booting"
    double.set_ssh(int(pid), "127.0.0.1", 2222)
    double.advance(20)
    inst = await provider.get(pid)
    assert inst.status == "running"
    assert (inst.ssh.host, inst.ssh.port, inst.ssh.user) == ("127.0.0.1", 2222, "root")
    assert provider.health(inst) == ("reachable", "running, SSH at 127.0.0.1:2222")
    assert inst.dph > 0 and inst.machine_id and inst.gpu_name == "RTX 4090"


async def test_get_of_a_destroyed_instance_is_none(provider, double):
    pid = await rent(provider, double)
    double.kill(int(pid))
    assert await provider.get(pid) is None


@pytest.mark.parametrize(
    ("detour", "at", "reason"),
    [
        ("exited", 30, "exited"),
        ("unknown", 30, "heartbeat"),
        ("offline", 60, "offline"),
        ("oci", 10, "OCI runtime create failed"),
        ("outbid", 60, "outbid"),
    ],
)
async def test_health_fails_fast_on_states_that_never_reach_running(
    provider, double, detour, at, reason
):
    pid = await rent(provider, double, detour=detour)
    double.advance(at)
    inst = await provider.get(pid)
    verdict, why = provider.health(inst)
    assert verdict == "failed" and reason in why


async def test_stuck_loading_stays_booting_for_the_callers_deadline(provider, double):
    pid = await rent(provider, double, detour="stuck_loading")
    double.advance(100_000)
    inst = await provider.get(pid)
    assert inst.status == "loading" and provider.health(inst)[0] == "booting"


def test_running_without_ssh_is_booting_and_an_unknown_status_waits():
    def inst(status: str, raw: dict[str, Any]) -> ProviderInstance:
        return ProviderInstance("1", None, None, status, "", None, 0.0, None, raw=raw)

    assert classify_status(inst("running", {"actual_status": "running"}))[0] == "booting"
    verdict, why = classify_status(inst("loading", {"actual_status": "hibernating"}))
    assert verdict == "booting" and "unrecognised" in why


# --- destroy --------------------------------------------------------------------------------------


async def test_destroy_is_idempotent(provider, double):
    pid = await rent(provider, double)
    await provider.destroy(pid)
    await provider.destroy(pid)  # no_such_instance: success
    assert double.live() == []
    assert [r.status for r in double.requests_to("destroy")] == [200, 404]


async def test_destroy_rides_out_429_5xx_and_a_lost_answer(provider, double):
    pid = await rent(provider, double)
    double.faults.next("destroy", "429_json")
    double.faults.next("destroy", "502")
    double.faults.next("destroy", "lost")
    await provider.destroy(pid)
    assert double.live() == []
    assert [r.status for r in double.requests_to("destroy")] == [429, 502, 599, 404]


async def test_destroy_raises_after_its_budget_and_the_instance_stays(make, double):
    provider = make(call_budget=0.5)
    pid = await rent(provider, double)
    double.faults.rate("destroy", "429_text", 1.0)
    with pytest.raises(ProviderRateLimited):
        await provider.destroy(pid)
    assert double.instances[int(pid)].alive  # the caller keeps it in `destroying`


async def test_a_non_numeric_id_is_refused_without_a_request(provider, double):
    with pytest.raises(ProviderError):
        await provider.destroy("../instances")
    assert double.requests == []


# --- rate limits ----------------------------------------------------------------------------------


async def test_min_intervals_keep_a_rate_limited_endpoint_happy(make, double):
    provider = make(min_interval={"show": 0.15})
    double.min_interval = {"show": 0.1}
    pid = await rent(provider, double)
    for _ in range(4):
        assert await provider.get(pid) is not None
    assert [r.status for r in double.requests_to("show")] == [200] * 4


async def test_without_min_intervals_the_429s_are_backed_off_instead(make, double):
    provider = make(min_interval={})
    double.min_interval = {"show": 0.1}
    pid = await rent(provider, double)
    for _ in range(3):
        assert await provider.get(pid) is not None
    statuses = [r.status for r in double.requests_to("show")]
    assert statuses.count(200) == 3 and 429 in statuses


async def test_attach_ssh_key(provider, double):
    pid = await rent(provider, double)
    await provider.attach_ssh_key(pid, KEY)
    assert double.instances[int(pid)].ssh_keys == [" ".join(KEY.split()[:2])]
