"""Leases in the store: standby keys, the take (one transaction), renew, release, expiry.

A take moves one ``ready`` instance that has a standby key to ``leased`` and records the
lease, in ONE transaction: on PostgreSQL the instance row is picked with ``SELECT … FOR
UPDATE SKIP LOCKED`` (replicas never block on, or both win, one row); on SQLite the
transaction's first statement is a write, so it holds the single writer's lock before it
reads and no other process can take the same row in between. Every move is also a
compare-and-set on the old state, so an instance is never leased twice.

Lease tokens are stored as their SHA-256 only; comparisons are constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Column, Float, Index, String, Table, Text, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from comfyfleet.fleet.states import State, check_transition
from comfyfleet.fleet.store import Store, instances, metadata, pools, transitions

if TYPE_CHECKING:
    from comfyfleet.fleet.keys import LeaseKey

lease_keys = Table(
    "lease_keys",
    metadata,
    Column("lease_id", String(32), primary_key=True),
    Column("pool", String(64), nullable=False),
    Column("instance_id", String(32), nullable=False),
    Column("state", String(16), nullable=False),  # standby | leased | removed
    Column("private_key", Text, nullable=False),
    Column("public_line", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Index("ix_lease_keys_instance_id", "instance_id"),
)

leases = Table(
    "leases",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("pool", String(64), nullable=False),
    Column("instance_id", String(32), nullable=False),
    Column("token_sha256", String(64), nullable=False),
    Column("state", String(16), nullable=False),  # active | released | expired
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("ended_at", Float),
    Column("ended_reason", Text),
    Index("ix_leases_pool_state", "pool", "state"),
)


@dataclass(frozen=True)
class Lease:
    """One lease row (the token itself is never stored)."""

    id: str
    instance_id: str
    state: str
    created_at: float
    expires_at: float
    ended_at: float | None
    ended_reason: str | None


@dataclass(frozen=True)
class Taken:
    """A lease just taken: its id, its token (shown once) and its key."""

    lease: Lease
    token: str
    private_key: str


def token_digest(token: str) -> str:
    """The stored form of a lease token."""
    return hashlib.sha256(token.encode()).hexdigest()


def token_matches(token: str, digest: str) -> bool:
    """Constant-time check of ``token`` against a stored digest."""
    return hmac.compare_digest(token_digest(token).encode(), digest.encode())


def engine_of(store: Store) -> AsyncEngine:
    """The store's engine (this module adds its own tables to the store)."""
    return _engine(store)


def _engine(store: Store) -> AsyncEngine:
    return store._engine  # the store's own engine: one connection pool per process


def _lease(m: Any) -> Lease:
    return Lease(
        id=m["id"], instance_id=m["instance_id"], state=m["state"], created_at=m["created_at"],
        expires_at=m["expires_at"], ended_at=m["ended_at"], ended_reason=m["ended_reason"],
    )  # fmt: skip


async def record_standby_key(store: Store, instance_id: str, key: LeaseKey, *, now: float) -> None:
    """Record ``key`` as the standby key of ``instance_id`` (an older standby is dropped)."""
    async with _engine(store).begin() as conn:
        await conn.execute(
            update(lease_keys)
            .where(lease_keys.c.instance_id == instance_id, lease_keys.c.state == "standby")
            .values(state="removed")
        )
        await conn.execute(
            insert(lease_keys).values(
                lease_id=key.lease_id, pool=store.pool, instance_id=instance_id,
                state="standby", private_key=key.private_key, public_line=key.public_line,
                created_at=now,
            )
        )  # fmt: skip


async def ready_without_key(store: Store) -> list[str]:
    """Ready instances of the pool that have no standby key yet (attached lazily)."""
    standby = select(lease_keys.c.instance_id).where(lease_keys.c.state == "standby")
    query = (
        select(instances.c.id)
        .where(
            instances.c.pool == store.pool,
            instances.c.state == State.READY.value,
            instances.c.id.not_in(standby),
        )
        .order_by(instances.c.state_since, instances.c.id)
    )
    async with _engine(store).connect() as conn:
        return list((await conn.execute(query)).scalars())


async def key_line(store: Store, lease_id: str) -> str | None:
    """The authorized_keys line of ``lease_id``'s key ("" for a keyless one), None if gone."""
    async with _engine(store).connect() as conn:
        return await conn.scalar(
            select(lease_keys.c.public_line).where(
                lease_keys.c.lease_id == lease_id, lease_keys.c.state != "removed"
            )
        )


async def mark_key_removed(store: Store, lease_id: str) -> None:
    """The key's line is gone from its instance."""
    async with _engine(store).begin() as conn:
        await conn.execute(
            update(lease_keys).where(lease_keys.c.lease_id == lease_id).values(state="removed")
        )


async def _lock_writer(conn: AsyncConnection, store: Store) -> None:
    """SQLite: make the transaction's first statement a write, so it reads as the writer."""
    if conn.dialect.name == "sqlite":
        await conn.execute(
            update(pools).where(pools.c.name == store.pool).values(updated_at=pools.c.updated_at)
        )


async def _move(
    conn: AsyncConnection, row_id: str, old: State, new: State, now: float, reason: str,
    **fields: Any,
) -> bool:  # fmt: skip
    check_transition(old, new)
    result = await conn.execute(
        update(instances)
        .where(instances.c.id == row_id, instances.c.state == old.value)
        .values(state=new.value, state_since=now, updated_at=now, **fields)
    )
    if result.rowcount != 1:
        return False
    await conn.execute(
        insert(transitions).values(
            instance_id=row_id, from_state=old.value, to_state=new.value, at=now, reason=reason
        )
    )
    return True


async def take(
    store: Store, *, ttl: float, now: float, instance_id: str | None = None
) -> Taken | None:
    """Lease one ready instance with a standby key (``instance_id``: that one only) in one
    transaction; None when none is ready."""
    got = await take_many(store, 1, ttl=ttl, now=now, instance_id=instance_id)
    return got[0] if got else None


async def take_many(
    store: Store, count: int, *, ttl: float, now: float, instance_id: str | None = None
) -> list[Taken]:
    """Lease up to ``count`` ready instances (oldest ready first) in ONE transaction: the
    requests that arrive together share one commit (one fsync) instead of queueing for one
    each."""
    taken: list[Taken] = []
    async with _engine(store).begin() as conn:
        await _lock_writer(conn, store)
        query = (
            select(instances.c.id, lease_keys.c.lease_id, lease_keys.c.private_key)
            .join(lease_keys, lease_keys.c.instance_id == instances.c.id)
            .where(
                instances.c.pool == store.pool,
                instances.c.state == State.READY.value,
                lease_keys.c.state == "standby",
            )
            .order_by(instances.c.state_since, instances.c.id)
            .limit(count)
        )
        if instance_id is not None:
            query = query.where(instances.c.id == instance_id)
        if conn.dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True, of=instances)
        for row_id, lease_id, private_key in (await conn.execute(query)).all():
            if not await _move(
                conn, row_id, State.READY, State.LEASED, now, f"lease {lease_id}",
                lease_id=lease_id,
            ):  # fmt: skip
                continue
            await conn.execute(
                update(lease_keys).where(lease_keys.c.lease_id == lease_id).values(state="leased")
            )
            token = secrets.token_urlsafe(32)
            values = {
                "id": lease_id, "pool": store.pool, "instance_id": row_id,
                "token_sha256": token_digest(token), "state": "active", "created_at": now,
                "expires_at": now + ttl, "ended_at": None, "ended_reason": None,
            }  # fmt: skip
            await conn.execute(insert(leases).values(**values))
            taken.append(Taken(_lease(values), token, private_key))
    return taken


async def get(store: Store, lease_id: str) -> tuple[Lease, str] | None:
    """A lease of this pool and its token digest, or None."""
    async with _engine(store).connect() as conn:
        m = (
            (
                await conn.execute(
                    select(leases).where(leases.c.id == lease_id, leases.c.pool == store.pool)
                )
            )
            .mappings()
            .first()
        )
    return (_lease(m), m["token_sha256"]) if m else None


async def active(store: Store) -> list[Lease]:
    """Every active lease of the pool."""
    query = select(leases).where(leases.c.pool == store.pool, leases.c.state == "active")
    async with _engine(store).connect() as conn:
        return [_lease(m) for m in (await conn.execute(query)).mappings()]


async def renew(store: Store, lease_id: str, *, ttl: float, now: float) -> Lease | None:
    """Push an active lease's expiry to ``now + ttl``; None when it is not active."""
    async with _engine(store).begin() as conn:
        result = await conn.execute(
            update(leases)
            .where(leases.c.id == lease_id, leases.c.state == "active")
            .values(expires_at=now + ttl)
        )
        if result.rowcount != 1:
            return None
    found = await get(store, lease_id)
    return found[0] if found else None


async def end(store: Store, lease_id: str, *, now: float, reason: str, state: str) -> Lease | None:
    """End an active lease (``released`` or ``expired``) and move its instance to
    ``releasing`` in one transaction; None when it was not active."""
    async with _engine(store).begin() as conn:
        await _lock_writer(conn, store)
        m = (
            (
                await conn.execute(
                    select(leases).where(
                        leases.c.id == lease_id,
                        leases.c.pool == store.pool,
                        leases.c.state == "active",
                    )
                )
            )
            .mappings()
            .first()
        )
        if m is None:
            return None
        await conn.execute(
            update(leases)
            .where(leases.c.id == lease_id, leases.c.state == "active")
            .values(state=state, ended_at=now, ended_reason=reason)
        )
        await _move(conn, m["instance_id"], State.LEASED, State.RELEASING, now, reason)
    found = await get(store, lease_id)
    return found[0] if found else None


async def due(store: Store, now: float) -> list[Lease]:
    """Active leases whose expiry has passed."""
    return [lease for lease in await active(store) if lease.expires_at <= now]
