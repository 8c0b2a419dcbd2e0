"""Pool policy: how many instances to request and which to retire (pure functions).

* Keep ``min_ready`` instances ready — counting those on their way (requested … provisioning).
* Retire ready instances above ``max_ready`` once idle for ``idle_timeout``, longest idle first.
* Never exceed ``max_instances`` alive or ``max_hourly_spend``: every state that can bill
  counts, ``creating`` intents whose outcome is unknown and instances still being destroyed
  included, and so do instances of ours the store does not track (they bill until destroyed).
* After a failed create or boot, wait ``backoff`` (doubling per failure, up to ``backoff_max``)
  before the next request, so a day when every offer fails is not a create/destroy storm.
* A ``draining`` pool (``pool destroy-all``) requests nothing and retires everything.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from comfyfleet.fleet.states import LIVE, PENDING, State
from comfyfleet.fleet.store import InstanceRow, PoolRow

S = State
#: states a retirement can start from (the rest are already on their way out or not yet real)
RETIRABLE = frozenset({S.BOOTING, S.PROVISIONING, S.READY, S.LEASED, S.RELEASING})


@dataclass(frozen=True)
class Limits:
    """The policy's knobs, from ``[pool]``."""

    min_ready: int
    max_ready: int
    max_instances: int
    max_hourly_spend: float
    idle_timeout: float
    #: $/h assumed for an intent whose offer is not chosen yet (the offers' max_dph, else 0)
    dph_estimate: float = 0.0


@dataclass(frozen=True)
class Plan:
    """What the policy wants this tick."""

    create: int
    retire: list[str]
    why: str  # one line for the log: the figures behind ``create``


def hourly_spend(
    rows: Sequence[InstanceRow], *, dph_estimate: float = 0.0, extra: float = 0.0
) -> float:
    """$/h over every row that can bill (an unpriced intent counts at ``dph_estimate``)."""
    total = extra
    for row in rows:
        if row.state in LIVE:
            total += row.dph if row.dph > 0 or row.offer_id else dph_estimate
    return total


def plan(
    rows: Sequence[InstanceRow],
    pool: PoolRow,
    limits: Limits,
    now: float,
    *,
    untracked: int = 0,
    untracked_dph: float = 0.0,
) -> Plan:
    """The number of new intents to write and the rows to retire this tick (pure)."""
    live = [r for r in rows if r.state in LIVE]
    if pool.draining:
        retire = [r.id for r in live if r.state in RETIRABLE]
        return Plan(create=0, retire=retire, why="draining")

    ready = [r for r in live if r.state is S.READY]
    pending = [r for r in live if r.state in PENDING]
    alive = len(live) + untracked
    spend = hourly_spend(live, dph_estimate=limits.dph_estimate, extra=untracked_dph)

    want = limits.min_ready - len(ready) - len(pending)
    room = limits.max_instances - alive
    if limits.dph_estimate > 0:
        budget = math.floor((limits.max_hourly_spend - spend) / limits.dph_estimate + 1e-9)
    else:
        budget = want if spend < limits.max_hourly_spend else 0
    create = max(0, min(want, room, budget))
    why = (
        f"ready {len(ready)}, pending {len(pending)}, alive {alive}/{limits.max_instances}, "
        f"${spend:.2f}/h of ${limits.max_hourly_spend:.2f}/h"
    )
    if create and now < pool.next_create_at:
        why += f"; backing off {pool.next_create_at - now:.0f}s after {pool.failures} failure(s)"
        create = 0

    idle = sorted(
        (r for r in ready if now - r.state_since >= limits.idle_timeout),
        key=lambda r: r.state_since,
    )
    surplus = len(ready) - limits.max_ready
    retire = [r.id for r in idle[: max(0, surplus)]]
    return Plan(create=create, retire=retire, why=why)
