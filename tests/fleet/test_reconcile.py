"""reconcile(): store view + provider listing → actions. Pure: no I/O, generated histories."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from comfyfleet.fleet.ownership import is_ours, label_pattern, new_label
from comfyfleet.fleet.policy import Limits, plan
from comfyfleet.fleet.providers.base import ProviderInstance, SshEndpoint
from comfyfleet.fleet.reconcile import (
    Adopt,
    Advance,
    Destroy,
    Fail,
    Launch,
    MarkDestroyed,
    MarkLost,
    Observed,
    Rules,
    owned,
    reconcile,
)
from comfyfleet.fleet.states import FINAL, LIVE, TRANSITIONS, State
from comfyfleet.fleet.store import InstanceRow, PoolRow

S = State
RULES = Rules(pool="sdxl", provision_timeout=100.0, lost_grace=5.0)


def inst(label: str | None, pid: str = "1", *, marker: str | None = "sdxl", status: str = "running",
         ssh: bool = True) -> ProviderInstance:  # fmt: skip
    return ProviderInstance(
        provider_id=pid,
        label=label,
        pool_marker=marker,
        status=status,
        status_msg="",
        ssh=SshEndpoint("h", 22, "root") if ssh else None,
        dph=0.5,
        machine_id="m" + pid,
    )


def row(label: str, state: State, *, pid: str | None = None, since: float = 0.0,
        created: float = 0.0, rid: str = "r1") -> InstanceRow:  # fmt: skip
    return InstanceRow(
        id=rid, pool="sdxl", label=label, state=state, provider_kind="vast", provider_id=pid,
        offer_id=None, machine_id=None, gpu_name=None, dph=0.5, created_at=created,
        updated_at=since, state_since=since, failure_reason=None, lease_id=None, ssh_host=None,
        ssh_port=None, ssh_user=None, destroy_attempts=0,
    )  # fmt: skip


def obs(i: ProviderInstance, health: str = "booting") -> Observed:
    return Observed(i, health, "because")  # type: ignore[arg-type]


L1 = "comfyfleet-sdxl-00000000000a"
L2 = "comfyfleet-sdxl-00000000000b"


# --- the ownership rule --------------------------------------------------------------------


def test_ownership_needs_the_exact_label_and_the_marker() -> None:
    assert is_ours(inst(L1), "sdxl")
    assert not is_ours(inst(L1, marker=None), "sdxl")  # look-alike without the env marker
    assert not is_ours(inst(L1, marker="sdxl-xl"), "sdxl")
    assert not is_ours(inst("comfyfleet-sdxl-xl-00000000000a", marker="sdxl"), "sdxl")  # prefix
    assert not is_ours(inst("comfyfleet-sdxl-00000000000A"), "sdxl")  # upper-case hex
    assert not is_ours(inst(L1 + "\n"), "sdxl")  # $ would match before a newline; fullmatch not
    assert not is_ours(inst(None), "sdxl")
    assert label_pattern("sdxl").fullmatch(new_label("sdxl"))


# --- single rules ------------------------------------------------------------------------


def test_unknown_labelled_instance_of_ours_is_destroyed_foreign_ones_are_not() -> None:
    listing = [
        inst(L1, "1"),
        inst(L2, "2", marker=None),
        inst("comfyfleet-sdxl-xl-00000000000c", "3", marker="sdxl-xl"),
        inst(None, "4"),
    ]
    mine = owned(listing, "sdxl")
    result = reconcile([], [obs(i) for i in mine], RULES, now=10)
    assert result.actions == [Destroy("1", None, "ours, but not tracked as live", label=L1)]
    assert [i.provider_id for i in result.untracked] == ["1"]


def test_creating_intent_is_resolved_by_its_label() -> None:
    i = inst(L1, "77")
    result = reconcile([row(L1, S.CREATING)], [obs(i)], RULES, now=1)
    assert result.actions == [Adopt("r1", i)] and result.untracked == []


def test_creating_intent_without_an_instance_waits_for_the_grace_then_is_lost() -> None:
    rows = [row(L1, S.CREATING, since=100)]
    assert reconcile(rows, [], RULES, now=104).actions == []
    actions = reconcile(rows, [], RULES, now=106).actions
    assert [type(a) for a in actions] == [MarkLost] and actions[0].old is S.CREATING


def test_vanished_instance_is_lost() -> None:
    actions = reconcile([row(L1, S.PROVISIONING, pid="5", since=0)], [], RULES, now=50).actions
    assert actions == [MarkLost("r1", S.PROVISIONING, "the provider no longer lists it")]


def test_destroying_is_retried_until_the_listing_confirms() -> None:
    i = inst(L1, "5")
    rows = [row(L1, S.DESTROYING, pid="5")]
    assert reconcile(rows, [obs(i)], RULES, now=1).actions == [
        Destroy("5", "r1", "destroy not yet confirmed")
    ]
    assert reconcile(rows, [], RULES, now=2).actions == [MarkDestroyed("r1")]


def test_a_failed_health_verdict_fails_and_destroys() -> None:
    i = inst(L1, "5", status="exited")
    actions = reconcile([row(L1, S.BOOTING, pid="5")], [obs(i, "failed")], RULES, now=1).actions
    assert [type(a) for a in actions] == [Fail, Destroy]
    assert actions[0].machine_id == "m5" and "because" in actions[0].reason


def test_reachable_booting_instance_moves_to_provisioning() -> None:
    i = inst(L1, "5")
    actions = reconcile([row(L1, S.BOOTING, pid="5")], [obs(i, "reachable")], RULES, now=1).actions
    assert actions == [Advance("r1", i)]


def test_provision_timeout_counts_from_the_create() -> None:
    i = inst(L1, "5")
    r = row(L1, S.PROVISIONING, pid="5", since=90, created=0)
    assert reconcile([r], [obs(i, "reachable")], RULES, now=99).actions == []
    actions = reconcile([r], [obs(i, "reachable")], RULES, now=101).actions
    assert [type(a) for a in actions] == [Fail, Destroy]
    assert "provision_timeout" in actions[0].reason


def test_requested_intents_launch_unless_held_back() -> None:
    rows = [row(L1, S.REQUESTED)]
    assert reconcile(rows, [], RULES, now=1).actions == [Launch("r1")]
    assert reconcile(rows, [], RULES, now=1, launch=False).actions == []


def test_instance_matched_by_provider_id_when_its_label_changed() -> None:
    i = inst("comfyfleet-sdxl-0000000000ff", "5")
    rows = [row(L1, S.DESTROYING, pid="5")]
    result = reconcile(rows, [obs(i)], RULES, now=1)
    assert result.actions == [Destroy("5", "r1", "destroy not yet confirmed")]
    assert result.untracked == []


# --- generated histories -------------------------------------------------------------------

LIMITS = Limits(min_ready=3, max_ready=3, max_instances=3, max_hourly_spend=10.0,
                idle_timeout=50.0, dph_estimate=0.5)  # fmt: skip
#: the way to destroying, as service.py walks it
TO_DESTROYING = {
    S.CREATING: (S.FAILED, S.DESTROYING), S.BOOTING: (S.FAILED, S.DESTROYING),
    S.PROVISIONING: (S.FAILED, S.DESTROYING), S.READY: (S.DESTROYING,),
    S.LEASED: (S.RELEASING, S.DESTROYING), S.RELEASING: (S.DESTROYING,),
    S.FAILED: (S.DESTROYING,), S.DESTROYING: (),
}  # fmt: skip


class PoolHistory(RuleBasedStateMachine):
    """A provider and a store in memory, driven through random ticks, crashes and faults.

    The executor below follows service.py step for step (state change committed before the
    provider call); a crash stops a tick after any number of its steps.
    """

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.ids = itertools.count(1)
        self.provider: dict[str, dict[str, Any]] = {}  # pid → label, marker, health
        self.rows: dict[str, InstanceRow] = {}
        self.pool = PoolRow("sdxl", draining=False, failures=0, next_create_at=0.0)
        self.max_alive = 0
        self.untouchable = {"f1": {"label": L2, "marker": None, "health": "reachable"},
                            "f2": {"label": "comfyfleet-sdxl-xl-00000000000c",
                                   "marker": "sdxl-xl", "health": "reachable"}}  # fmt: skip
        self.provider.update({k: dict(v) for k, v in self.untouchable.items()})
        self.clean_ticks = 0
        #: creates sent whose instance shows up only later (the listing lagged the create)
        self.late: list[str] = []
        #: a late instance appeared after its intent was already called lost
        self.beyond_grace = False
        #: the provider answers every destroy with 429 for now
        self.refusing = False

    # --- the in-memory world --------------------------------------------------------------

    def _set(self, rid: str, old: State, new: State, **fields: Any) -> bool:
        r = self.rows[rid]
        if r.state is not old:
            return False
        assert new in TRANSITIONS[old], f"{old} → {new}"
        self.rows[rid] = dataclasses.replace(r, state=new, state_since=self.now, **fields)
        return True

    def _create_at_provider(self, label: str, health: str = "booting") -> str:
        pid = str(next(self.ids))
        self.provider[pid] = {"label": label, "marker": "sdxl", "health": health}
        alive = sum(1 for p in self.provider if p not in self.untouchable)
        self.max_alive = max(self.max_alive, alive)
        return pid

    def _listing(self) -> list[Observed]:
        out = []
        for pid, p in self.provider.items():
            i = inst(p["label"], pid, marker=p["marker"])
            if is_ours(i, "sdxl"):
                out.append(obs(i, p["health"]))
        return out

    def _steps(self, create_outcome: str) -> list[Any]:
        """The tick as a list of steps (closures), so a crash can cut it anywhere."""
        listing = self._listing()
        rows = [r for r in self.rows.values() if r.state in LIVE]
        launch_ok = not self.pool.draining and self.now >= self.pool.next_create_at
        result = reconcile(rows, listing, RULES, self.now, launch=launch_ok)
        steps: list[Any] = []
        launches: list[str] = []
        for a in result.actions:
            if isinstance(a, Launch):
                launches.append(a.row_id)
            else:
                steps.extend(self._apply(a))

        def policy_and_launch() -> list[Any]:
            live = [r for r in self.rows.values() if r.state in LIVE]
            decision = plan(live, self.pool, LIMITS, self.now, untracked=len(result.untracked))
            more: list[Any] = []
            for rid in decision.retire:
                more.extend(self._destroy_steps(rid, None))
            for _ in range(decision.create):
                rid = f"r{next(self.ids)}"
                self.rows[rid] = dataclasses.replace(
                    row(new_label("sdxl"), S.REQUESTED, since=self.now, created=self.now), id=rid
                )
                launches.append(rid)
            for rid in launches:
                more.extend(self._launch_steps(rid, create_outcome))
            return more

        steps.append(policy_and_launch)
        return steps

    def _apply(self, a: Any) -> list[Any]:
        if isinstance(a, Adopt):
            return [
                lambda: self._set(a.row_id, S.CREATING, S.BOOTING, provider_id=a.inst.provider_id)
            ]
        if isinstance(a, Advance):
            return [lambda: self._set(a.row_id, S.BOOTING, S.PROVISIONING)]
        if isinstance(a, Fail):
            return [lambda: self._set(a.row_id, a.old, S.FAILED, failure_reason=a.reason)]
        if isinstance(a, MarkLost):
            return [lambda: self._set(a.row_id, a.old, S.LOST)]
        if isinstance(a, MarkDestroyed):
            return [lambda: self._set(a.row_id, S.DESTROYING, S.DESTROYED)]
        assert isinstance(a, Destroy)
        if a.row_id is None:
            return [lambda: self._provider_destroy(a.provider_id)]
        return self._destroy_steps(a.row_id, a.provider_id)

    def _provider_destroy(self, pid: str | None) -> None:
        assert pid not in self.untouchable, "destroyed someone else's instance"
        if not self.refusing:  # a refused destroy (429 after retries) leaves it billing
            self.provider.pop(pid, None)

    def _destroy_steps(self, rid: str, pid: str | None) -> list[Any]:
        walked: list[bool] = []

        def walk() -> None:
            r = self.rows[rid]
            if r.state not in TO_DESTROYING:
                return
            state = r.state
            for step in TO_DESTROYING[state]:
                self._set(rid, state, step)
                state = step
            walked.append(True)

        def call() -> None:  # a crash can fall between the commit and the call
            if walked and self.rows[rid].state is S.DESTROYING:
                self._provider_destroy(pid or self.rows[rid].provider_id)

        return [walk, call]

    def _launch_steps(self, rid: str, outcome: str) -> list[Any]:
        label = self.rows[rid].label

        def to_creating() -> None:
            self._set(rid, S.REQUESTED, S.CREATING)

        def call() -> None:
            if self.rows[rid].state is not S.CREATING:
                return
            if outcome == "unavailable":
                return  # nothing happened at the provider; the row waits to be lost
            if outcome == "late":
                self.late.append(rid)  # happens at the provider, shows up later
                return
            pid = self._create_at_provider(label)
            if outcome == "ok":
                self._set(rid, S.CREATING, S.BOOTING, provider_id=pid)
            # "lost_answer": created, the answer never arrived (resolved by label later)

        return [to_creating, call]

    # --- rules: what can happen ----------------------------------------------------------

    @rule(
        dt=st.floats(0.5, 30),
        outcome=st.sampled_from(["ok", "ok", "lost_answer", "unavailable", "late"]),
    )
    def tick(self, dt: float, outcome: str) -> None:
        self.now += dt
        pending = self._steps(outcome)
        while pending:
            step = pending.pop(0)
            more = step()
            if isinstance(more, list):
                pending = more + pending
        self.clean_ticks += 1

    @rule(
        dt=st.floats(0.5, 30),
        cut=st.integers(0, 12),
        outcome=st.sampled_from(["ok", "lost_answer"]),
    )
    def crashed_tick(self, dt: float, cut: int, outcome: str) -> None:
        self.now += dt
        pending = self._steps(outcome)
        for _ in range(cut):
            if not pending:
                break
            more = pending.pop(0)()
            if isinstance(more, list):
                pending = more + pending
        self.clean_ticks = 0

    @rule(data=st.data())
    def a_late_create_shows_up(self, data: st.DataObject) -> None:
        if self.late:
            rid = self.late.pop(data.draw(st.integers(0, len(self.late) - 1)))
            if self.rows[rid].state is S.LOST:
                self.beyond_grace = True
            self._create_at_provider(self.rows[rid].label)
            self.clean_ticks = 0

    @rule(data=st.data())
    def provider_loses_one(self, data: st.DataObject) -> None:
        ours = sorted(p for p in self.provider if p not in self.untouchable)
        if ours:
            self.provider.pop(data.draw(st.sampled_from(ours)))
            self.clean_ticks = 0

    @rule(data=st.data(), health=st.sampled_from(["reachable", "failed"]))
    def instance_changes(self, data: st.DataObject, health: str) -> None:
        ours = sorted(p for p in self.provider if p not in self.untouchable)
        if ours:
            self.provider[data.draw(st.sampled_from(ours))]["health"] = health
            self.clean_ticks = 0

    @rule(refusing=st.booleans())
    def provider_refuses_destroys(self, refusing: bool) -> None:
        self.refusing = refusing
        self.clean_ticks = 0

    @rule(draining=st.booleans())
    def drain_or_resume(self, draining: bool) -> None:
        self.pool = dataclasses.replace(self.pool, draining=draining)
        self.clean_ticks = 0

    # --- what must always hold -----------------------------------------------------------

    @invariant()
    def never_more_than_max_instances_alive(self) -> None:
        # holds while creates show up within lost_grace; one that shows up after its intent
        # was called lost is destroyed (next invariant) but may briefly be one too many
        if not self.beyond_grace:
            assert self.max_alive <= LIMITS.max_instances

    @invariant()
    def every_instance_of_ours_has_an_intent_row(self) -> None:
        labels = {r.label for r in self.rows.values()}
        for pid, p in self.provider.items():
            if pid not in self.untouchable:
                assert p["label"] in labels, "an instance was created before its intent row"

    @invariant()
    def others_are_untouched(self) -> None:
        for pid, p in self.untouchable.items():
            assert self.provider[pid] == p

    @invariant()
    def after_a_clean_tick_every_instance_of_ours_is_tracked_live(self) -> None:
        if self.clean_ticks == 0 or self.refusing:
            return
        live_labels = {r.label for r in self.rows.values() if r.state in LIVE}
        for pid, p in self.provider.items():
            if pid not in self.untouchable:
                assert p["label"] in live_labels, f"instance {pid} alive but not tracked live"

    @invariant()
    def final_rows_have_no_instance_after_a_clean_tick(self) -> None:
        if self.clean_ticks == 0 or self.refusing:
            return
        final_labels = {r.label for r in self.rows.values() if r.state in FINAL}
        alive = {p["label"] for k, p in self.provider.items() if k not in self.untouchable}
        # a lost row's instance can reappear later (the listing lagged): it is destroyed on
        # the next clean tick, so two clean ticks in a row leave none
        if self.clean_ticks >= 2:
            assert not (final_labels & alive)


TestPoolHistory = PoolHistory.TestCase
TestPoolHistory.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip
