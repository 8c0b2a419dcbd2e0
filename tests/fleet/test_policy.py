"""plan(): how many intents to write and which instances to retire (pure)."""

from __future__ import annotations

import dataclasses

from hypothesis import given
from hypothesis import strategies as st

from comfyfleet.fleet.policy import Limits, hourly_spend, plan
from comfyfleet.fleet.states import LIVE, PENDING, State
from comfyfleet.fleet.store import InstanceRow, PoolRow

S = State
POOL = PoolRow("sdxl", draining=False, failures=0, next_create_at=0.0)
LIMITS = Limits(min_ready=2, max_ready=3, max_instances=5, max_hourly_spend=3.0,
                idle_timeout=600, dph_estimate=0.5)  # fmt: skip


def row(state: State, *, rid: str = "r", dph: float = 0.5, since: float = 0.0,
        offer: str | None = "o") -> InstanceRow:  # fmt: skip
    return InstanceRow(
        id=rid, pool="sdxl", label=f"comfyfleet-sdxl-{rid:0>12}", state=state,
        provider_kind="vast", provider_id=None, offer_id=offer, machine_id=None, gpu_name=None,
        dph=dph, created_at=0.0, updated_at=since, state_since=since, failure_reason=None,
        lease_id=None, ssh_host=None, ssh_port=None, ssh_user=None, destroy_attempts=0,
    )  # fmt: skip


def rows(*states: State, **kw: float) -> list[InstanceRow]:
    return [row(s, rid=str(i), **kw) for i, s in enumerate(states)]  # type: ignore[arg-type]


def test_an_empty_pool_requests_min_ready() -> None:
    assert plan([], POOL, LIMITS, now=0).create == 2


def test_instances_on_their_way_count_towards_min_ready() -> None:
    assert plan(rows(S.CREATING, S.BOOTING), POOL, LIMITS, now=0).create == 0
    assert plan(rows(S.REQUESTED), POOL, LIMITS, now=0).create == 1
    # leased ones do not: they are not ready for the next user
    assert plan(rows(S.LEASED, S.LEASED), POOL, LIMITS, now=0).create == 2


def test_max_instances_counts_every_state_that_can_bill() -> None:
    billing = rows(S.LEASED, S.LEASED, S.DESTROYING, S.FAILED, dph=0.1)
    assert plan(billing, POOL, LIMITS, now=0).create == 1  # 5 - 4
    full = rows(S.LEASED, S.LEASED, S.DESTROYING, S.FAILED, S.CREATING, dph=0.1)
    assert plan(full, POOL, LIMITS, now=0).create == 0
    # instances of ours the store does not track bill too until destroyed
    assert plan(billing, POOL, LIMITS, now=0, untracked=1).create == 0


def test_spend_cap_counts_unpriced_intents_at_the_estimate() -> None:
    spent = rows(S.LEASED, S.LEASED, dph=1.2)  # $2.40/h of $3.00/h
    assert plan(spent, POOL, LIMITS, now=0).create == 1  # one more at ≤ $0.50/h
    spent.append(row(S.REQUESTED, rid="x", dph=0.0, offer=None))  # + $0.50 estimated
    assert hourly_spend(spent, dph_estimate=0.5) == 2.9
    assert plan(spent, POOL, LIMITS, now=0).create == 0


def test_backoff_holds_creates_until_its_time() -> None:
    backing = dataclasses.replace(POOL, failures=3, next_create_at=100.0)
    held = plan([], backing, LIMITS, now=99)
    assert held.create == 0 and "backing off" in held.why
    assert plan([], backing, LIMITS, now=100).create == 2


def test_idle_ready_instances_above_max_ready_are_retired_longest_idle_first() -> None:
    ready = [row(S.READY, rid=str(i), since=t) for i, t in enumerate([0, 50, 700, 10, 20])]
    p = plan(ready, POOL, LIMITS, now=1000)
    assert p.retire == ["0", "3"] and p.create == 0  # 5 ready, max_ready 3; all idle but "2"
    assert plan(ready, POOL, LIMITS, now=500).retire == []  # none idle for 600 s yet


def test_draining_creates_nothing_and_retires_everything_on_its_way_or_ready() -> None:
    draining = dataclasses.replace(POOL, draining=True)
    p = plan(rows(S.REQUESTED, S.BOOTING, S.READY, S.LEASED, S.DESTROYING), draining, LIMITS, 0)
    assert p.create == 0 and p.retire == ["1", "2", "3"]


@given(
    st.lists(st.sampled_from(sorted(LIVE)), max_size=8),
    st.integers(0, 4),
    st.floats(0, 2),
    st.integers(0, 3),
)
def test_plan_never_breaks_a_cap(states: list[State], min_ready: int, dph: float,
                                 untracked: int) -> None:  # fmt: skip
    limits = dataclasses.replace(LIMITS, min_ready=min_ready, max_ready=max(min_ready, 1))
    current = rows(*states, dph=dph)
    p = plan(current, POOL, limits, now=0, untracked=untracked, untracked_dph=dph * untracked)
    assert p.create >= 0
    assert len(current) + untracked + p.create <= max(
        limits.max_instances, len(current) + untracked
    )
    spend = hourly_spend(current, dph_estimate=limits.dph_estimate) + dph * untracked
    if p.create:
        assert spend + p.create * limits.dph_estimate <= limits.max_hourly_spend + 1e-9
        ready_or_pending = sum(1 for s in states if s in PENDING or s is S.READY)
        assert ready_or_pending + p.create <= min_ready
