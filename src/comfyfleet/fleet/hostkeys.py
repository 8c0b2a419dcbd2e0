"""Host keys pinned per instance id, in the store.

Vast.ai reuses proxy ``host:port`` pairs, so a key is pinned to the fleet's instance id,
never to an address. Trust on first use happens only at the first contact of an instance
this pool created (no key pinned yet); every later contact, by any replica, accepts exactly
the pinned key. Operator-owned hosts (``kind = "ssh"``) use the operator's known_hosts.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Column, Float, String, Table, Text, insert, select
from sqlalchemy.exc import IntegrityError

from comfyfleet.fleet.agent import HostKeyPolicy
from comfyfleet.fleet.logstore import engine_of
from comfyfleet.fleet.store import Store, metadata

host_keys = Table(
    "host_keys",
    metadata,
    Column("instance_id", String(32), primary_key=True),
    Column("host_key", Text, nullable=False),
    Column("pinned_at", Float, nullable=False),
)


async def pinned_key(store: Store, instance_id: str) -> str | None:
    """The key pinned for ``instance_id`` (None: never contacted)."""
    async with engine_of(store).connect() as conn:
        return await conn.scalar(
            select(host_keys.c.host_key).where(host_keys.c.instance_id == instance_id)
        )


async def pin_key(store: Store, instance_id: str, key: str) -> str:
    """Pin ``key`` unless a key is pinned already; returns the key now pinned."""
    try:
        async with engine_of(store).begin() as conn:
            await conn.execute(
                insert(host_keys).values(
                    instance_id=instance_id, host_key=key, pinned_at=store._clock()
                )
            )
    except IntegrityError:  # pinned meanwhile (another replica): the first pin wins
        pass
    found = await pinned_key(store, instance_id)
    return found or key


async def policy_for(
    store: Store, instance_id: str, *, operator_known_hosts: Path | None, operator: bool
) -> HostKeyPolicy:
    """The host-key policy of one contact: the operator's known_hosts, the pin, or TOFU."""
    if operator:
        return HostKeyPolicy.operator(operator_known_hosts)
    key = await pinned_key(store, instance_id)
    return HostKeyPolicy.pin(key) if key else HostKeyPolicy.tofu()
