"""Leader election over the store: one replica runs the control loop, every replica serves.

Leadership is a lease row per pool (``leader``: holder, epoch, expires_at) renewed by
heartbeat every ``ttl / 4``; once it has expired another replica takes it in one UPDATE, and
the epoch goes up by one. A session advisory lock would not do: a SIGSTOPped leader keeps its
session, and the lock with it. Times are the database's clock, so replicas on machines whose
clocks disagree still agree on when a lease expired.

Fencing: the control loop gets a :meth:`Store.fenced` store, whose every write first reads the
leader row (``FOR SHARE`` on PostgreSQL, so a takeover waits for it) and raises :class:`Fenced`
when the epoch is no longer its own. A paused leader that wakes up records nothing and steps
down; an action whose intent it wrote before the pause is resolved by the new leader's
reconciler through the label, as after a crash.

SQLite serves one replica: :func:`single_replica` takes an ``flock`` beside the database file
(the kernel drops it on SIGKILL, so a restart after a crash is never refused).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from sqlalchemy import Column, Float, Integer, String, Table, delete, insert, literal_column, select
from sqlalchemy import update as sql_update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from comfyfleet.errors import ComfyfleetError, UsageError
from comfyfleet.fleet.store import async_url, metadata

if TYPE_CHECKING:
    from comfyfleet.fleet.store import Store

leader = Table(
    "leader",
    metadata,
    Column("pool", String(64), primary_key=True),
    Column("holder", String(128)),
    Column("epoch", Integer, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("since", Float, nullable=False),
)

replicas = Table(
    "replicas",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("pool", String(64), nullable=False, index=True),
    Column("listen", String(255)),
    Column("started_at", Float, nullable=False),
    Column("seen_at", Float, nullable=False),
)

#: a replica unseen for this many lease lifetimes is left out of `pool status`
STALE_TTLS = 3


class Fenced(ComfyfleetError):
    """This replica's epoch is no longer the pool's: it lost the lead and recorded nothing."""


class SecondReplica(UsageError):
    """Another `pool serve` holds this SQLite store (SQLite serves one replica)."""


def db_now(conn: AsyncConnection) -> Any:
    """The database's own clock in seconds since the epoch, as a SQL expression."""
    if conn.dialect.name == "postgresql":
        return literal_column("CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)")
    return literal_column("((julianday('now') - 2440587.5) * 86400.0)")


async def check_fence(conn: AsyncConnection, pool: str, epoch: int) -> None:
    """Raise :class:`Fenced` unless ``epoch`` is still the pool's, holding the row till commit."""
    query = select(leader.c.epoch).where(leader.c.pool == pool).with_for_update(read=True)
    current = await conn.scalar(query)
    if current != epoch:
        raise Fenced(
            f"pool {pool}: this replica led at epoch {epoch}, the pool is at {current}; "
            "nothing was recorded and it stops leading"
        )


def new_replica_id(listen: str | None = None) -> str:
    """A name for this process: host, pid and a random tail (unique across restarts)."""
    host = "".join(c for c in socket.gethostname() if c.isalnum() or c in "-.")[:48] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class LeaderRow:
    """Who leads a pool, since when, until when, at which epoch (database clock)."""

    holder: str | None
    epoch: int
    since: float
    expires_at: float
    now: float


class Election:
    """The leader row of one pool and this replica's heartbeat row."""

    def __init__(
        self, engine: AsyncEngine, pool: str, replica: str, ttl: float, *, listen: str | None
    ) -> None:
        self.engine = engine
        self.pool = pool
        self.replica = replica
        self.ttl = ttl
        self.listen = listen

    async def ensure(self) -> None:
        """Create the pool's leader row (nobody leads, epoch 0) if it is missing."""
        async with self.engine.connect() as conn:
            found = await conn.scalar(select(leader.c.pool).where(leader.c.pool == self.pool))
        if found is not None:
            return
        with contextlib.suppress(IntegrityError):  # another replica inserted it first
            async with self.engine.begin() as conn:
                await conn.execute(
                    insert(leader).values(
                        pool=self.pool, holder=None, epoch=0, expires_at=0.0, since=0.0
                    )
                )

    async def take(self, *, force: bool = False) -> int | None:
        """Lead if the lease expired (or ``force``): the new epoch, else None."""
        async with self.engine.begin() as conn:
            await self._bounded(conn)
            now = db_now(conn)
            query = sql_update(leader).where(leader.c.pool == self.pool)
            if not force:
                query = query.where(leader.c.expires_at < now)
            result = await conn.execute(
                query.values(
                    holder=self.replica,
                    epoch=leader.c.epoch + 1,
                    expires_at=now + self.ttl,
                    since=now,
                )
            )
            if result.rowcount != 1:
                return None
            return int(await conn.scalar(select(leader.c.epoch).where(leader.c.pool == self.pool)))

    async def _bounded(self, conn: AsyncConnection) -> None:
        """PostgreSQL: wait at most a beat for the leader row's lock (a stuck holder's open
        transaction must not stall the election: the attempt fails and is retried)."""
        if conn.dialect.name == "postgresql":
            await conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{int(self.ttl * 250)}ms'")

    async def renew(self, epoch: int) -> bool:
        """Push our lease's expiry out by ``ttl``; False when another replica took it."""
        async with self.engine.begin() as conn:
            await self._bounded(conn)
            result = await conn.execute(
                sql_update(leader)
                .where(
                    leader.c.pool == self.pool,
                    leader.c.holder == self.replica,
                    leader.c.epoch == epoch,
                )
                .values(expires_at=db_now(conn) + self.ttl)
            )
            return result.rowcount == 1

    async def resign(self, epoch: int) -> None:
        """Let the lease expire now (a clean stop: the next replica need not wait)."""
        async with self.engine.begin() as conn:
            await conn.execute(
                sql_update(leader)
                .where(
                    leader.c.pool == self.pool,
                    leader.c.holder == self.replica,
                    leader.c.epoch == epoch,
                )
                .values(expires_at=0.0)
            )

    async def beat(self) -> None:
        """Record that this replica is alive (for `pool status`)."""
        async with self.engine.begin() as conn:
            now = db_now(conn)
            result = await conn.execute(
                sql_update(replicas).where(replicas.c.id == self.replica).values(seen_at=now)
            )
            if result.rowcount == 0:
                await conn.execute(
                    insert(replicas).values(
                        id=self.replica,
                        pool=self.pool,
                        listen=self.listen,
                        started_at=now,
                        seen_at=now,
                    )
                )

    async def leave(self) -> None:
        """Remove this replica's heartbeat row."""
        async with self.engine.begin() as conn:
            await conn.execute(delete(replicas).where(replicas.c.id == self.replica))


async def read_leader(engine: AsyncEngine, pool: str) -> LeaderRow | None:
    """The pool's leader row, with the database's clock now (None before any serve ran)."""
    async with engine.connect() as conn:
        query = select(leader, db_now(conn).label("now")).where(leader.c.pool == pool)
        m = (await conn.execute(query)).mappings().first()
    if m is None:
        return None
    return LeaderRow(m["holder"], m["epoch"], m["since"], m["expires_at"], m["now"])


async def replica_status(engine: AsyncEngine, pool: str, ttl: float) -> dict[str, Any]:
    """``pool status``'s replicas part: who is alive, who leads and since when, the epoch."""
    row = await read_leader(engine, pool)
    async with engine.connect() as conn:
        now = await conn.scalar(select(db_now(conn)))
        query = (
            select(replicas)
            .where(replicas.c.pool == pool, replicas.c.seen_at >= now - STALE_TTLS * ttl)
            .order_by(replicas.c.started_at)
        )
        alive = list((await conn.execute(query)).mappings())
    leading = row is not None and row.holder is not None and row.expires_at >= row.now
    holder = row.holder if leading and row is not None else None
    items = [
        {
            "id": r["id"],
            "leader": r["id"] == holder,
            # the leader: leading since; the others: up since
            "since": row.since if row is not None and r["id"] == holder else r["started_at"],
            "listen": r["listen"],
            "seen_s": round(max(0.0, now - r["seen_at"]), 1),
        }
        for r in alive
    ]
    return {
        "replicas": items,
        "leader": (
            {"id": holder, "since": row.since, "expires_in_s": round(row.expires_at - row.now, 1)}
            if holder is not None and row is not None
            else None
        ),
        "epoch": row.epoch if row is not None else 0,
    }


# --- the gate around the control loop ------------------------------------------------------


async def lead(
    store: Store,
    work: Callable[[Store], Awaitable[None]],
    *,
    ttl: float,
    log: Callable[[str], None],
    replica: str | None = None,
    listen: str | None = None,
    force_first: bool = False,
) -> None:
    """Compete for the lead forever; while leading, run ``work`` on a fenced store.

    ``work`` is cancelled when the lease cannot be renewed in time or another replica took
    it, and stops by itself (:class:`Fenced`) when a write finds a newer epoch, or when the
    store fails under it. Any other exception from ``work`` ends the serve. ``force_first``
    takes the lead at once (SQLite, whose flock proves no other serve is alive)."""
    election = Election(store.engine, store.pool, replica or new_replica_id(), ttl, listen=listen)
    beat = ttl / 4
    await election.ensure()
    force = force_first
    try:
        while True:
            epoch = await _attempt(election, log, force=force)
            force = False
            if epoch is None:
                await asyncio.sleep(beat / 2)
                continue
            log(f"replica {election.replica} leads pool {store.pool} (epoch {epoch})")
            why = await _hold(election, epoch, work(store.fenced(epoch)), beat, log)
            log(f"replica {election.replica} stops leading (epoch {epoch}): {why}")
            if not force_first:
                # stand back one lease lifetime: a replica that just failed as leader (cut
                # off, fenced) lets a healthy standby win the next term
                await asyncio.sleep(ttl)
    finally:
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(_leave(election)), timeout=beat)


async def _leave(election: Election) -> None:
    row = await read_leader(election.engine, election.pool)
    if row is not None and row.holder == election.replica:
        await election.resign(row.epoch)
    await election.leave()


async def _attempt(election: Election, log: Callable[[str], None], *, force: bool) -> int | None:
    try:
        await asyncio.wait_for(election.beat(), timeout=election.ttl / 4)
        return await asyncio.wait_for(election.take(force=force), timeout=election.ttl / 4)
    except (OSError, SQLAlchemyError, TimeoutError) as exc:
        log(f"replica {election.replica}: store not answering, standing by: {_short(exc)}")
        return None


async def _hold(
    election: Election,
    epoch: int,
    work: Awaitable[None],
    beat: float,
    log: Callable[[str], None],
) -> str:
    """Renew the lease while ``work`` runs; return why leading ended (``work`` is stopped)."""
    task = asyncio.ensure_future(work)
    # we lead until this local deadline unless a renewal moves it; stop a beat before the
    # database would let another replica in
    valid_until = time.monotonic() + election.ttl - beat
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=beat)
            if done:
                exc = task.exception()
                if exc is None:
                    return "the control loop ended"
                why = _stand_down(exc)
                if why is None:
                    raise exc
                return why
            started = time.monotonic()
            try:
                if not await asyncio.wait_for(election.renew(epoch), timeout=beat):
                    return "another replica took the lead"
                valid_until = started + election.ttl - beat
            except (OSError, SQLAlchemyError, TimeoutError) as exc:
                log(f"replica {election.replica}: lease renewal failed: {_short(exc)}")
            if time.monotonic() >= valid_until:
                return "the lease could not be renewed in time"
            with contextlib.suppress(OSError, SQLAlchemyError, TimeoutError):
                await asyncio.wait_for(election.beat(), timeout=beat)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _stand_down(exc: BaseException) -> str | None:
    """Why the control loop's ``exc`` means "stand by" rather than "crash", or None.

    Fenced: another replica leads. A store error: stand by; whoever leads next (maybe us
    again) starts the loop afresh from the store. A task group's errors count when all do."""
    if isinstance(exc, BaseExceptionGroup):
        reasons = [_stand_down(e) for e in exc.exceptions]
        return None if not reasons or None in reasons else str(reasons[0])
    if isinstance(exc, Fenced):
        return str(exc)
    if isinstance(exc, (OSError, SQLAlchemyError)):
        return f"the store failed: {_short(exc)}"
    return None


def _short(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --- SQLite: one replica ---------------------------------------------------------------------


@dataclass
class ReplicaLock:
    """The flock that makes this process the only `pool serve` of a SQLite store."""

    path: Path
    handle: IO[str]

    def release(self) -> None:
        """Drop the lock (the kernel does this too when the process dies)."""
        self.handle.close()


def single_replica(store_url: str) -> ReplicaLock | None:
    """On SQLite, lock ``<db>.serve.lock`` or raise :class:`SecondReplica`; None on PostgreSQL."""
    full = async_url(store_url)
    if not full.startswith("sqlite"):
        return None
    db = full.removeprefix("sqlite+aiosqlite:///")
    if not db or db == ":memory:":
        return None
    path = Path(db).with_name(Path(db).name + ".serve.lock")
    try:
        handle = path.open("a+", encoding="utf-8")
    except OSError as exc:
        raise UsageError(
            f"cannot create the replica lock {path}: {exc.strerror or exc}",
            hint="check that the store's directory is writable",
        ) from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip()[:64]
        handle.close()
        raise SecondReplica(
            f"another `pool serve` ({holder or 'pid unknown'}) already serves the SQLite store "
            f"{db}; SQLite serves one replica",
            hint="stop the other serve, or run several replicas on PostgreSQL "
            "([store] url = postgresql://user@host/db)",
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}\n")
    handle.flush()
    return ReplicaLock(path, handle)


__all__ = [
    "Election",
    "Fenced",
    "LeaderRow",
    "ReplicaLock",
    "SecondReplica",
    "check_fence",
    "db_now",
    "lead",
    "leader",
    "new_replica_id",
    "read_leader",
    "replica_status",
    "replicas",
    "single_replica",
]
