"""Reconciliation: the store's view + the provider's listing → the moves that make them agree.

Level-triggered, as a Kubernetes controller: :func:`reconcile` is a pure function of what the
store says and what the provider lists right now. It remembers nothing between ticks, so a
crash only delays the next pass. The I/O that carries the actions out is :mod:`.service`.

The rules (issue 11):

* An instance that is ours (:mod:`.ownership`) but matches no live row — unknown, or one the
  store says is destroyed/lost — is destroyed.
* A ``creating`` intent is resolved by its label: listed → ``booting`` with its id; not listed
  for ``create_grace`` → ``lost`` (should it appear later, the previous rule destroys it).
* A row whose instance vanished is ``lost`` (and the policy replaces it).
* ``failed`` rows and rows to retire are destroyed; ``destroying`` rows are destroyed again on
  every tick until the listing no longer has them, and only then become ``destroyed``.
* ``booting`` → ``provisioning`` once the provider says reachable; ``failed`` as soon as it
  says the instance will never get there; ``booting``/``provisioning`` past
  ``provision_timeout`` (from the create) fail and are destroyed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from comfyfleet.fleet.ownership import is_ours
from comfyfleet.fleet.providers.base import Health, ProviderInstance
from comfyfleet.fleet.states import DEADLINED, State
from comfyfleet.fleet.store import InstanceRow

S = State


@dataclass(frozen=True)
class Observed:
    """One listed instance of ours with the provider's health verdict."""

    inst: ProviderInstance
    health: Health
    reason: str


@dataclass(frozen=True)
class Rules:
    """The timing that reconciliation needs from the pool config."""

    pool: str
    provision_timeout: float
    lost_grace: float  # how long a row may be missing from the listing before it is lost
    #: how long a create whose answer was lost may take to show up in the listing
    create_grace: float | None = None


# --- actions ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Adopt:
    """A ``creating`` intent found by its label: record the provider id (→ booting)."""

    row_id: str
    inst: ProviderInstance


@dataclass(frozen=True)
class Advance:
    """``booting`` → ``provisioning``: the instance is reachable."""

    row_id: str
    inst: ProviderInstance


@dataclass(frozen=True)
class Fail:
    """The row failed (reason recorded); a Destroy for it follows in the same plan."""

    row_id: str
    old: State
    reason: str
    machine_id: str | None
    counts_as_create_failure: bool = True


@dataclass(frozen=True)
class MarkLost:
    """The provider no longer knows the row's instance (final; the policy replaces it)."""

    row_id: str
    old: State
    reason: str


@dataclass(frozen=True)
class MarkDestroyed:
    """The listing confirms a ``destroying`` row's instance is gone (final)."""

    row_id: str


@dataclass(frozen=True)
class Destroy:
    """Destroy ``provider_id`` (None: nothing was created; just confirm by the listing).

    ``row_id`` is None for an instance of ours the store does not track as live.
    """

    provider_id: str | None
    row_id: str | None
    reason: str
    #: the label the instance is destroyed by (ssh ids are reused: touch it only if it still
    #: carries this label); the row's label when there is a row
    label: str | None = None


@dataclass(frozen=True)
class Launch:
    """A ``requested`` intent (written before a crash, or just now) to create."""

    row_id: str


Action = Adopt | Advance | Fail | MarkLost | MarkDestroyed | Destroy | Launch


@dataclass(frozen=True)
class Reconciled:
    """The plan of one tick plus what the policy needs to know about the listing."""

    actions: list[Action]
    #: instances of ours that match no live row (being destroyed; they still bill)
    untracked: list[ProviderInstance]


def owned(listing: Iterable[ProviderInstance], pool: str) -> list[ProviderInstance]:
    """The listed instances that are ``pool``'s by the ownership rule."""
    return [inst for inst in listing if is_ours(inst, pool)]


def reconcile(
    rows: Sequence[InstanceRow],
    observed: Sequence[Observed],
    rules: Rules,
    now: float,
    *,
    launch: bool = True,
) -> Reconciled:
    """The moves that bring the store and the provider's listing together (pure).

    ``rows`` are the store's live rows, ``observed`` the listed instances that are ours (by
    :func:`owned`), ``launch`` whether ``requested`` intents may be created now (not while
    draining or backing off).
    """
    by_label = {o.inst.label: o for o in observed}
    by_id = {o.inst.provider_id: o for o in observed}
    matched: set[str] = set()
    actions: list[Action] = []

    for row in rows:
        obs = by_label.get(row.label)
        if obs is None and row.provider_id is not None:
            obs = by_id.get(row.provider_id)
        if obs is not None:
            matched.add(obs.inst.provider_id)
        actions.extend(_row_actions(row, obs, rules, now, launch))

    untracked = [o.inst for o in observed if o.inst.provider_id not in matched]
    for inst in untracked:
        actions.append(
            Destroy(inst.provider_id, None, "ours, but not tracked as live", label=inst.label)
        )
    return Reconciled(actions=actions, untracked=untracked)


def _row_actions(
    row: InstanceRow, obs: Observed | None, rules: Rules, now: float, launch: bool
) -> list[Action]:
    state = row.state
    if state is S.REQUESTED:
        return [Launch(row.id)] if launch else []

    if state is S.DESTROYING:
        if obs is None:
            return [MarkDestroyed(row.id)]
        return [Destroy(obs.inst.provider_id, row.id, "destroy not yet confirmed")]

    if state is S.FAILED:
        pid = obs.inst.provider_id if obs else row.provider_id
        return [Destroy(pid, row.id, row.failure_reason or "failed")]

    missing_for = now - row.state_since
    if obs is None:
        if state is S.CREATING:
            grace = rules.create_grace if rules.create_grace is not None else rules.lost_grace
            if missing_for < grace:
                return []  # the create may still be under way, or the listing lags it
            return [MarkLost(row.id, state, "create outcome unknown; no instance has its label")]
        if missing_for < rules.lost_grace:
            return []  # the listing may lag a fresh create (SkyPilot #4443)
        return [MarkLost(row.id, state, "the provider no longer lists it")]

    inst = obs.inst
    if state is S.CREATING:
        return [Adopt(row.id, inst)]

    if obs.health == "failed":
        return _fail(row, f"provider: {obs.reason}", inst)

    if state in DEADLINED and now - row.created_at > rules.provision_timeout:
        return _fail(
            row, f"not ready within provision_timeout ({rules.provision_timeout:g}s)", inst
        )

    if state is S.BOOTING and obs.health == "reachable":
        return [Advance(row.id, inst)]
    return []


def _fail(row: InstanceRow, reason: str, inst: ProviderInstance) -> list[Action]:
    if row.state in {S.BOOTING, S.PROVISIONING}:
        # a boot that fails counts towards the replacement backoff (no create/destroy storm)
        fail = Fail(row.id, row.state, reason, inst.machine_id or row.machine_id)
        return [fail, Destroy(inst.provider_id, row.id, reason)]
    # ready / leased / releasing: destroyed with the reason in the history
    return [Destroy(inst.provider_id, row.id, reason)]
