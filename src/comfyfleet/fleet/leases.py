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

from sqlalchemy import (
    Column,
    Float,
    Index,
    Integer,
    Select,
    String,
    Table,
    Text,
    bindparam,
    insert,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from comfyfleet.fleet.states import State, check_transition
from comfyfleet.fleet.store import (
    InstanceRow,
    Store,
    instances,
    metadata,
    pools,
    row_of,
    transitions,
)

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
    """A lease just taken: its id, its token (shown once), its key and its instance's row
    (as the take left it: leased)."""

    lease: Lease
    token: str
    private_key: str
    row: InstanceRow


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


def _pick(dialect: str, by_id: bool) -> Select[Any]:
    """The oldest ready rows with a standby key (PostgreSQL: locked, skipping locked ones)."""
    key = (dialect, by_id)
    if key not in _PICKS:
        query = (
            select(
                instances,
                lease_keys.c.lease_id.label("key_lease_id"),
                lease_keys.c.private_key.label("key_private"),
            )
            .join(lease_keys, lease_keys.c.instance_id == instances.c.id)
            .where(
                instances.c.pool == bindparam("b_pool"),
                instances.c.state == State.READY.value,
                lease_keys.c.state == "standby",
            )
            .order_by(instances.c.state_since, instances.c.id)
            .limit(bindparam("b_count", type_=Integer))
        )
        if by_id:
            query = query.where(instances.c.id == bindparam("b_id"))
        if dialect == "postgresql":
            query = query.with_for_update(skip_locked=True, of=instances)
        _PICKS[key] = query
    return _PICKS[key]


# The take's statements are built once: building and cache-keying a statement per lease was a
# third of a take's CPU. Each runs once per batch, as an executemany over its rows.
_PICKS: dict[tuple[str, bool], Select[Any]] = {}
_TAKE_ROW = (
    update(instances)
    .where(instances.c.id == bindparam("b_id"), instances.c.state == State.READY.value)
    .values(
        state=State.LEASED.value, state_since=bindparam("b_now"), updated_at=bindparam("b_now"),
        lease_id=bindparam("b_lease"),
    )
)  # fmt: skip
_TAKE_LOG = insert(transitions).values(
    instance_id=bindparam("b_id"), from_state=State.READY.value, to_state=State.LEASED.value,
    at=bindparam("b_now"), reason=bindparam("b_reason"),
)  # fmt: skip
_TAKE_KEY = (
    update(lease_keys).where(lease_keys.c.lease_id == bindparam("b_lease")).values(state="leased")
)


async def take_many(
    store: Store, count: int, *, ttl: float, now: float, instance_id: str | None = None
) -> list[Taken]:
    """Lease up to ``count`` ready instances (oldest ready first) in ONE transaction: the
    requests that arrive together share one commit (one fsync) instead of queueing for one
    each."""
    check_transition(State.READY, State.LEASED)
    async with _engine(store).begin() as conn:
        await _lock_writer(conn, store)
        params: dict[str, Any] = {"b_pool": store.pool, "b_count": count}
        if instance_id is not None:
            params["b_id"] = instance_id
        picked = (
            (await conn.execute(_pick(conn.dialect.name, instance_id is not None), params))
            .mappings()
            .all()
        )
        if not picked:
            return []
        moves = [
            {"b_id": m["id"], "b_lease": m["key_lease_id"], "b_now": now,
             "b_reason": f"lease {m['key_lease_id']}"}
            for m in picked
        ]  # fmt: skip
        moved = await conn.execute(_TAKE_ROW, moves)
        if moved.rowcount != len(moves):
            # the picked rows are ours until commit (row locks on PostgreSQL, the writer lock
            # on SQLite), so this is a bug: roll back rather than lease a row twice
            raise RuntimeError(f"lease take: {len(moves) - moved.rowcount} picked row(s) moved")
        await conn.execute(_TAKE_LOG, moves)
        await conn.execute(_TAKE_KEY, moves)
        taken: list[Taken] = []
        rows: list[dict[str, Any]] = []
        for m in picked:
            token = secrets.token_urlsafe(32)
            lease_id = m["key_lease_id"]
            values = {
                "id": lease_id, "pool": store.pool, "instance_id": m["id"],
                "token_sha256": token_digest(token), "state": "active", "created_at": now,
                "expires_at": now + ttl, "ended_at": None, "ended_reason": None,
            }  # fmt: skip
            rows.append(values)
            row = row_of(
                {**{c.name: m[c.name] for c in instances.c}, "state": State.LEASED.value,
                 "state_since": now, "updated_at": now, "lease_id": lease_id}
            )  # fmt: skip
            taken.append(Taken(_lease(values), token, m["key_private"], row))
        await conn.execute(insert(leases), rows)
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
    """Active leases whose expiry has passed (the sweep runs every second on every replica:
    it reads only those, not every active lease)."""
    query = select(leases).where(
        leases.c.pool == store.pool, leases.c.state == "active", leases.c.expires_at <= now
    )
    async with _engine(store).connect() as conn:
        return [_lease(m) for m in (await conn.execute(query)).mappings()]
