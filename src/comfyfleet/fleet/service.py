"""The pool's control loop: one reconcile pass per tick, then the policy, then creates.

A thin I/O shell around the pure :func:`.reconcile.reconcile` and :func:`.policy.plan`:
one paged list call per tick, then the moves carried out in order — every state change
committed before the provider call it announces (intent before action), every provider id
committed right after the call that returned it.

Inside :meth:`PoolService.serve`, every instance in ``provisioning`` gets one provisioning
task (:mod:`.driver`) in the service's TaskGroup — never two for one instance — which ends
it ``ready`` or ``failed`` (destroyed and replaced with the backoff by the next ticks). A
task whose row left ``provisioning`` (timeout, lost, destroy-all) is cancelled; the remote
provision is then destroyed with its instance.
"""

from __future__ import annotations

import asyncio
import secrets
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from comfyfleet.fleet.agent import Endpoint
from comfyfleet.fleet.config import PoolConfig, VastProvider
from comfyfleet.fleet.driver import ProvisionDriver
from comfyfleet.fleet.errors import (
    CreateFailed,
    OfferUnavailable,
    ProviderAuthError,
    ProviderError,
)
from comfyfleet.fleet.ownership import POOL_ENV, new_label
from comfyfleet.fleet.policy import Limits, hourly_spend, plan
from comfyfleet.fleet.providers.base import Offer, Provider, ProviderInstance
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
from comfyfleet.fleet.states import State
from comfyfleet.fleet.store import InstanceRow, Store
from comfyfleet.names import escape_controls
from comfyfleet.redact import redact_text

S = State
#: the way from each state to ``destroying`` through legal transitions
TO_DESTROYING: dict[State, tuple[State, ...]] = {
    S.CREATING: (S.FAILED, S.DESTROYING),
    S.BOOTING: (S.FAILED, S.DESTROYING),
    S.PROVISIONING: (S.FAILED, S.DESTROYING),
    S.READY: (S.DESTROYING,),
    S.LEASED: (S.RELEASING, S.DESTROYING),
    S.RELEASING: (S.DESTROYING,),
    S.FAILED: (S.DESTROYING,),
    S.DESTROYING: (),
}
#: offers tried for one intent in one tick before it waits for the next
OFFERS_PER_LAUNCH = 3
#: a row may be missing from the listing this many ticks before it is lost
LOST_GRACE_TICKS = 5


def stderr_log(line: str) -> None:
    """One timestamped line on stderr (secrets redacted, control characters escaped)."""
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp}] {escape_controls(redact_text(line))}", file=sys.stderr, flush=True)


@dataclass
class TickReport:
    """What one tick saw and did (for logs, tests and the benchmark)."""

    listed: int = 0
    owned: int = 0
    actions: Counter[str] = field(default_factory=Counter)
    requested: int = 0
    error: str | None = None


class PoolService:
    """Reconciler + policy + creates for one pool, over one store and one provider."""

    def __init__(
        self,
        config: PoolConfig,
        store: Store,
        provider: Provider,
        *,
        ssh_public_key: str = "",
        clock: Callable[[], float] = time.time,
        log: Callable[[str], None] = stderr_log,
        endpoint_for: Callable[[InstanceRow], Endpoint] | None = None,
        agent_cache: Path | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.provider = provider
        self.ssh_public_key = ssh_public_key
        self.clock = clock
        self.log = log
        section = config.pool
        self.rules = Rules(
            pool=section.name,
            provision_timeout=section.provision_timeout,
            lost_grace=LOST_GRACE_TICKS * section.tick,
            create_grace=section.create_grace,
        )
        vast = config.provider if isinstance(config.provider, VastProvider) else None
        self.limits = Limits(
            min_ready=section.min_ready,
            max_ready=section.ready_cap,
            max_instances=section.max_instances,
            max_hourly_spend=section.max_hourly_spend,
            idle_timeout=section.idle_timeout,
            dph_estimate=(vast.offers.max_dph or 0.0) if vast else 0.0,
        )
        self._offers: list[Offer] | None = None
        self._spend = 0.0
        self._draining = False
        self.last_listing: list[ProviderInstance] = []
        self.driver = ProvisionDriver(
            config, store, provider, log=log, endpoint_for=endpoint_for, agent_cache=agent_cache
        )
        self._group: asyncio.TaskGroup | None = None
        #: the provisioning task of each instance (at most one)
        self.provisions: dict[str, asyncio.Task[None]] = {}
        #: the release flow of each instance in ``releasing`` (at most one)
        self.releases: dict[str, asyncio.Task[None]] = {}

    # --- the loop ------------------------------------------------------------------------

    async def serve(self, *, ticks: int | None = None) -> None:
        """Tick until cancelled (SIGTERM/SIGINT) or ``ticks`` passes; instances stay tracked
        (provisions keep running on their instances and are adopted by the next serve)."""
        n = 0
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                # (wave2: fleet-replicas) the leader renews the dead-man's switch heartbeats
                from comfyfleet.fleet import deadman

                group.create_task(deadman.keep_alive(self.driver, self.store))
                try:
                    while ticks is None or n < ticks:
                        started = time.monotonic()
                        await self.tick()
                        n += 1
                        if ticks is None or n < ticks:
                            pause = self.config.pool.tick - (time.monotonic() - started)
                            await asyncio.sleep(max(0.0, pause))
                finally:
                    self._group = None
                    for task in [*self.provisions.values(), *self.releases.values()]:
                        task.cancel()
        except BaseExceptionGroup as group_error:
            # the loop's own error (a fenced write, a failed store) as callers know it, not
            # wrapped by the TaskGroup (the instance tasks never raise: _guarded)
            raise group_error.exceptions[0] from None

    async def tick(self) -> TickReport:
        """One pass: list, reconcile, apply, plan, create."""
        report = TickReport()
        self._offers = None
        try:
            listing = await self.provider.list_instances()
        except ProviderError as exc:
            report.error = str(exc)
            self.log(f"listing failed, retrying next tick: {exc}")
            return report
        self.last_listing = listing
        now = self.clock()
        rows = await self.store.live()
        pool = await self.store.pool_row()
        mine = owned(listing, self.rules.pool)
        report.listed, report.owned = len(listing), len(mine)
        observed = [Observed(inst, *self.provider.health(inst)) for inst in mine]
        if pool.draining != self._draining:
            self._draining = pool.draining
            self.log(
                "pool is draining: nothing is created (pool resume clears it)"
                if pool.draining
                else "pool is not draining: creating again"
            )
        launch_ok = not pool.draining and now >= pool.next_create_at
        result = reconcile(rows, observed, self.rules, now, launch=launch_ok)

        launches: list[str] = []
        done: set[str] = set()  # rows already destroyed this tick (draining retires them too)
        for action in result.actions:
            report.actions[type(action).__name__] += 1
            if isinstance(action, Launch):
                launches.append(action.row_id)
            else:
                await self._apply(action, done)

        if report.actions["MarkDestroyed"] or report.actions["MarkLost"]:
            from comfyfleet.fleet import deadman

            await deadman.forget_final_keys(self.store)  # their per-instance API keys
        rows = await self.store.live()
        pool = await self.store.pool_row()
        decision = plan(
            rows,
            pool,
            self.limits,
            now,
            untracked=len(result.untracked),
            untracked_dph=sum(i.dph for i in result.untracked),
        )
        for row_id in decision.retire:
            if row_id not in done:
                report.actions["Retire"] += 1
                await self._destroy(row_id, None, "retired by the pool policy", done)
        for _ in range(decision.create):
            row = await self.store.add_intent(
                row_id=secrets.token_hex(6),
                label=new_label(self.rules.pool),
                provider_kind=self.provider.kind,
                dph=0.0,
            )
            launches.append(row.id)
        report.requested = decision.create
        if decision.create:
            self.log(f"requesting {decision.create} instance(s): {decision.why}")
        if launches:
            # $/h of everything that can bill, kept current across this tick's launches
            self._spend = hourly_spend(
                await self.store.live(),
                dph_estimate=self.limits.dph_estimate,
                extra=sum(i.dph for i in result.untracked),
            )
        for row_id in launches:
            await self._launch(row_id)
        if self._group is not None:
            await self._provision_tasks()
        return report

    # --- provisioning --------------------------------------------------------------------

    async def _provision_tasks(self) -> None:
        """One task per ``provisioning`` row; cancel those whose row moved on."""
        assert self._group is not None
        rows = {r.id: r for r in await self.store.live()}
        for row_id, task in list(self.provisions.items()):
            row = rows.get(row_id)
            if task.done():
                del self.provisions[row_id]
            elif row is None or row.state is not S.PROVISIONING:
                task.cancel()
                del self.provisions[row_id]
        for row_id, task in list(self.releases.items()):
            if task.done():
                del self.releases[row_id]
        for row in rows.values():
            if row.state is S.PROVISIONING and row.id not in self.provisions:
                self.provisions[row.id] = self._group.create_task(
                    self._guarded(self._provision(row), row.id), name=f"provision {row.id}"
                )
            elif row.state is S.RELEASING:
                await self.release_flow(row.id, "released")

    async def release_flow(self, row_id: str, reason: str) -> None:
        """Start the release flow of an instance in ``releasing`` (the lease API calls it once
        the lease has ended; the loop calls it for rows found in ``releasing``)."""
        if self._group is None or row_id in self.releases:
            return  # not serving (the next serve's loop runs it) or running already
        self.releases[row_id] = self._group.create_task(
            self._guarded(self._release(row_id, reason), row_id), name=f"release {row_id}"
        )

    async def _guarded(self, work: Awaitable[None], row_id: str) -> None:
        """Run one instance's task; a failure (the store gone, the lead lost) is logged and
        left to the loop, which meets the same store at its next write."""
        try:
            await work
        except Exception as exc:
            why = escape_controls(str(exc))[:200]
            self.log(f"{row_id}: task stopped: {type(exc).__name__}: {why}")

    async def _release(self, row_id: str, reason: str) -> None:
        """on_release: destroy, or wipe and provision again (ssh hosts: wipe, then release)."""
        row = await self.store.get(row_id)
        if row is None or row.state is not S.RELEASING:
            return
        mode = self.config.pool.on_release
        wipe_first = mode == "reprovision" or self.provider.kind == "ssh"
        if self.provider.kind == "local" or not wipe_first:
            # a local slot is stopped and freed by its destroy; a new one is provisioned fresh
            await self._destroy(row_id, None, f"{reason} (on_release = destroy)", set())
            return
        try:
            if mode == "reprovision":
                await self.driver.prepare_reprovision(row)
            await self.driver.wipe(row)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never hand an unwiped machine on
            why = f"wipe after release failed: {escape_controls(str(exc))[:300]}"
            self.log(f"{row_id}: {why}; destroying it")
            await self._destroy(row_id, None, why, set())
            return
        if mode != "reprovision":
            await self._destroy(row_id, None, f"{reason} (wiped, host released)", set())
            return
        if await self.store.transition(
            row_id, S.RELEASING, S.PROVISIONING, reason=f"{reason}: wiped; provisioning again"
        ):
            self.log(f"{row_id}: released and wiped; provisioning again")

    async def _provision(self, row: InstanceRow) -> None:
        """Provision ``row``; ready on success, failed (then destroyed, replaced) otherwise."""
        try:
            outcome = await self.driver.provision(row)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # one instance's bug must not end the pool's loop
            reason = f"provisioning stopped: {type(exc).__name__}: {exc}"
            if await self.store.transition(row.id, S.PROVISIONING, S.FAILED, reason=reason):
                self.log(f"{row.id}: failed: {reason}")
                await self._note_failure()
            return
        if outcome.ready:
            if await self.store.transition(
                row.id, S.PROVISIONING, S.READY, reason=f"provisioned (run {outcome.run_id})"
            ):
                await self.store.note_create_success()
                self.log(f"{row.id}: ready (run {outcome.run_id})")
            return
        reason = f"provisioning failed (run {outcome.run_id}): {outcome.reason}"
        if await self.store.transition(row.id, S.PROVISIONING, S.FAILED, reason=reason):
            self.log(f"{row.id}: {reason}; its log is kept in logs/{row.id}/{outcome.run_id}/")
            await self._note_failure()

    # --- applying reconcile actions ------------------------------------------------------

    async def _apply(self, action: object, done: set[str]) -> None:
        store = self.store
        if isinstance(action, Adopt):
            inst = action.inst
            if await store.transition(
                action.row_id, S.CREATING, S.BOOTING, reason="found by its label",
                **_instance_fields(inst),
            ):  # fmt: skip
                self.log(f"{action.row_id}: create resolved by label → {inst.provider_id}")
        elif isinstance(action, Advance):
            inst = action.inst
            ssh = inst.ssh
            fields = (
                {"ssh_host": ssh.host, "ssh_port": ssh.port, "ssh_user": ssh.user} if ssh else {}
            )
            if await store.transition(
                action.row_id, S.BOOTING, S.PROVISIONING, reason="reachable", **fields
            ):
                # the backoff is reset by a ready instance, not a reachable one: a pool whose
                # provisions fail must keep backing off
                self.log(f"{action.row_id}: reachable → provisioning")
        elif isinstance(action, Fail):
            if await store.transition(action.row_id, action.old, S.FAILED, reason=action.reason):
                self.log(f"{action.row_id}: failed: {action.reason}")
                if action.machine_id:
                    self.provider.block(action.machine_id, action.reason)
                if action.counts_as_create_failure:
                    await self._note_failure()
        elif isinstance(action, MarkLost):
            if await store.transition(action.row_id, action.old, S.LOST, reason=action.reason):
                self.log(f"{action.row_id}: lost: {action.reason}")
        elif isinstance(action, MarkDestroyed):
            if await store.transition(
                action.row_id, S.DESTROYING, S.DESTROYED, reason="gone from the listing"
            ):
                self.log(f"{action.row_id}: destroyed (confirmed by the listing)")
        elif isinstance(action, Destroy):
            if action.row_id is None:
                if action.provider_id is not None:
                    await self._call_destroy(
                        action.provider_id, action.label, f"untracked: {action.reason}"
                    )
            elif action.row_id not in done:
                await self._destroy(action.row_id, action.provider_id, action.reason, done)
        else:  # pragma: no cover - reconcile's Action union is closed
            raise TypeError(f"unknown action {action!r}")

    async def _destroy(
        self, row_id: str, provider_id: str | None, reason: str, done: set[str]
    ) -> None:
        """Move the row to ``destroying`` (committed), then ask the provider to destroy."""
        done.add(row_id)
        row = await self.store.get(row_id)
        if row is None or row.state not in TO_DESTROYING:
            return
        state = row.state
        for step in TO_DESTROYING[state]:
            if not await self.store.transition(row_id, state, step, reason=reason):
                return  # someone else moved it: the next tick sees the new state
            state = step
        pid = provider_id or row.provider_id
        if pid is None:
            return  # nothing was created; the listing confirms its label is absent next tick
        if row.provider_id != pid:
            await self.store.update(row_id, provider_id=pid)
        await self.store.update(row_id, destroy_attempts=row.destroy_attempts + 1)
        await self._call_destroy(pid, row.label, f"{row_id}: {reason}")

    async def _call_destroy(self, provider_id: str, label: str | None, why: str) -> None:
        try:
            await self.provider.destroy(provider_id, label=label)
            self.log(f"destroy {provider_id} sent ({why})")
        except ProviderError as exc:
            self.log(f"destroy {provider_id} failed, retrying next tick: {exc}")

    async def _note_failure(self) -> None:
        pool = await self.store.note_create_failure(
            self.config.pool.backoff, self.config.pool.backoff_max
        )
        self.log(
            f"{pool.failures} failure(s) in a row: next create in "
            f"{max(0.0, pool.next_create_at - self.clock()):.0f}s"
        )

    # --- creating ------------------------------------------------------------------------

    async def _candidate_offers(self, budget: float) -> list[Offer]:
        if self._offers is None:
            try:
                self._offers = await self.provider.search_offers()
            except ProviderError as exc:
                self.log(f"offer search failed, retrying next tick: {exc}")
                self._offers = []
        return [o for o in self._offers if o.dph <= budget + 1e-9]

    async def _launch(self, row_id: str) -> None:
        """Create the instance of a ``requested`` intent (which is committed already)."""
        row = await self.store.get(row_id)
        if row is None or row.state is not S.REQUESTED:
            return
        own = row.dph if row.dph > 0 or row.offer_id else self.limits.dph_estimate
        budget = self.config.pool.max_hourly_spend - (self._spend - own)
        offers = await self._candidate_offers(budget)
        if not offers:
            self.log(f"{row_id}: no offer within ${budget:.2f}/h; waiting")
            await self._note_failure()
            return
        state = S.REQUESTED
        for offer in offers[:OFFERS_PER_LAUNCH]:
            fields = {
                "offer_id": offer.offer_id,
                "machine_id": offer.machine_id,
                "gpu_name": offer.gpu_name,
                "dph": offer.dph,
            }
            if state is S.REQUESTED:
                if not await self.store.transition(
                    row_id, S.REQUESTED, S.CREATING, reason=f"offer {offer.offer_id}", **fields
                ):
                    return
                state = S.CREATING
            else:
                await self.store.update(row_id, **fields)
            self._spend += offer.dph - own
            own = offer.dph
            outcome = await self._create(row, offer)
            if self._offers is not None and offer in self._offers:
                self._offers.remove(offer)  # rented, taken or in doubt: not for the next intent
            if outcome != "unavailable":
                return
        if await self.store.transition(
            row_id, S.CREATING, S.FAILED, reason="every offer tried was taken"
        ):
            await self._note_failure()
            await self._destroy(row_id, None, "no offer available", set())

    async def _create(self, row: InstanceRow, offer: Offer) -> str:
        """One create call for ``row`` on ``offer``: "created", "unavailable", "failed" or
        "unknown" (may have happened: left in ``creating``, resolved by label later)."""
        try:
            created = await self.provider.create(
                offer,
                label=row.label,
                env=self._instance_env(),
                onstart=self._onstart(),
                ssh_public_key=self.ssh_public_key,
            )
        except OfferUnavailable:
            self.log(f"{row.id}: offer {offer.offer_id} was taken; trying the next")
            return "unavailable"
        except CreateFailed as exc:
            if exc.provider_id is not None:
                # the error answer names the instance it made: it exists and bills
                await self.store.transition(
                    row.id, S.CREATING, S.FAILED, reason=f"create failed: {exc}",
                    provider_id=exc.provider_id,
                )  # fmt: skip
                await self._note_failure()
                await self._destroy(row.id, exc.provider_id, "created despite an error", set())
                return "failed"
            self.log(f"{row.id}: create failed, outcome unknown (resolved by label): {exc}")
            await self._note_failure()
            return "unknown"
        except ProviderAuthError as exc:
            await self.store.transition(row.id, S.CREATING, S.FAILED, reason=str(exc))
            await self._note_failure()
            await self._destroy(row.id, None, "credentials refused", set())
            self.log(f"{row.id}: {exc}")
            return "failed"
        except ProviderError as exc:
            self.log(f"{row.id}: create may have happened (resolved by label): {exc}")
            await self._note_failure()
            return "unknown"
        await self.store.transition(
            row.id, S.CREATING, S.BOOTING, reason="created", provider_id=created.provider_id
        )
        if created.instance_api_key:  # (wave2: fleet-replicas) for the dead-man's switch
            from comfyfleet.fleet import deadman

            await deadman.remember_key(self.store, row.id, created.instance_api_key)
        self.log(f"{row.id}: created {created.provider_id} on offer {offer.offer_id}")
        return "created"

    def _instance_env(self) -> Mapping[str, str]:
        vast = self.config.provider if isinstance(self.config.provider, VastProvider) else None
        return {**(vast.env if vast else {}), POOL_ENV: self.rules.pool}

    def _onstart(self) -> str:
        vast = self.config.provider if isinstance(self.config.provider, VastProvider) else None
        return vast.onstart if vast else ""


def _instance_fields(inst: ProviderInstance) -> dict[str, object]:
    fields: dict[str, object] = {"provider_id": inst.provider_id}
    if inst.machine_id:
        fields["machine_id"] = inst.machine_id
    if inst.gpu_name:
        fields["gpu_name"] = inst.gpu_name
    if inst.dph > 0:
        fields["dph"] = inst.dph
    return fields
