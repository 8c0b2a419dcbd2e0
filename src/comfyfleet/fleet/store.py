"""The pool's state store: instance rows, their transition history, the pool row.

SQLAlchemy 2 (asyncio), one schema for SQLite (aiosqlite, the default file) and PostgreSQL
(psycopg 3). The schema is created and upgraded by the Alembic scripts shipped in
``fleet/migrations``; a store written by a newer comfyfleet refuses to open.

Intent before action: callers write a row (``requested``) and commit it before any provider
call, move it to ``creating`` before the create call, and record the provider id right after.
Every state change is a compare-and-set on the old state, in one transaction with its history
row, so two processes (``pool serve`` and ``pool destroy-all``) never both win one transition.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from comfyfleet.errors import UsageError
from comfyfleet.fleet.states import FINAL, LIVE, State, check_transition
from comfyfleet.redact import redact_url

MIGRATIONS = Path(__file__).with_name("migrations")

metadata = MetaData()

pools = Table(
    "pools",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("draining", Boolean, nullable=False, default=False),
    Column("failures", Integer, nullable=False, default=0),
    Column("next_create_at", Float, nullable=False, default=0.0),
    Column("updated_at", Float, nullable=False),
)

instances = Table(
    "instances",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("pool", String(64), nullable=False, index=True),
    Column("label", String(128), nullable=False, unique=True),
    Column("state", String(16), nullable=False),
    Column("provider_kind", String(16), nullable=False),
    Column("provider_id", String(128)),
    Column("offer_id", String(128)),
    Column("machine_id", String(128)),
    Column("gpu_name", String(128)),
    Column("dph", Float, nullable=False, default=0.0),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("state_since", Float, nullable=False),
    Column("failure_reason", Text),
    Column("lease_id", String(64)),
    Column("ssh_host", String(255)),
    Column("ssh_port", Integer),
    Column("ssh_user", String(64)),
    Column("destroy_attempts", Integer, nullable=False, default=0),
    Index("ix_instances_pool_state_since", "pool", "state", "state_since", "id"),
)

transitions = Table(
    "transitions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("instance_id", String(32), nullable=False, index=True),
    Column("from_state", String(16)),
    Column("to_state", String(16), nullable=False),
    Column("at", Float, nullable=False),
    Column("reason", Text),
)


class StoreError(UsageError):
    """The store cannot be opened (bad URL, unreachable database, written by a newer version)."""


@dataclass(frozen=True)
class InstanceRow:
    """One instance as the store knows it."""

    id: str
    pool: str
    label: str
    state: State
    provider_kind: str
    provider_id: str | None
    offer_id: str | None
    machine_id: str | None
    gpu_name: str | None
    dph: float
    created_at: float
    updated_at: float
    state_since: float
    failure_reason: str | None
    lease_id: str | None
    ssh_host: str | None
    ssh_port: int | None
    ssh_user: str | None
    destroy_attempts: int


@dataclass(frozen=True)
class PoolRow:
    """The pool-level row: ``draining`` (set by destroy-all) and the replacement backoff."""

    name: str
    draining: bool
    failures: int
    next_create_at: float


@dataclass(frozen=True)
class Transition:
    """One history entry (append-only)."""

    instance_id: str
    from_state: State | None
    to_state: State
    at: float
    reason: str | None


def async_url(url: str) -> str:
    """The SQLAlchemy URL with its asyncio driver: aiosqlite or psycopg 3."""
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url.removeprefix("sqlite:///")
    if url.startswith("sqlite+aiosqlite:///") or url.startswith("postgresql+psycopg://"):
        return url
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url.removeprefix("postgresql://")
    raise StoreError(
        f"store url {redact_url(url)!r} is not supported",
        hint="use sqlite:////absolute/path.db or postgresql://user@host/db",
    )


def row_of(m: Mapping[str, Any]) -> InstanceRow:
    """An ``instances`` row (as a mapping) as an :class:`InstanceRow`."""
    return InstanceRow(**{**m, "state": State(m["state"])})


def _migrate(sync_conn: Any) -> None:
    """Check the schema version row, then upgrade to this code's head (Alembic)."""
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    if sync_conn.dialect.name == "postgresql":
        # (wave2: fleet-replicas) replicas starting together: one migrates, the others wait
        # for it (the lock ends with this transaction) instead of racing CREATE TABLE
        sync_conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7262011013)")
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = sync_conn
    script = ScriptDirectory.from_config(cfg)
    current = MigrationContext.configure(sync_conn).get_current_heads()
    known = {rev.revision for rev in script.walk_revisions()}
    newer = [rev for rev in current if rev not in known]
    if newer:
        raise StoreError(
            f"the store's schema version {newer[0]} is newer than this comfyfleet "
            f"(which knows up to {script.get_current_head()})",
            hint="upgrade comfyfleet on this machine; the store was not changed",
        )
    try:
        command.upgrade(cfg, "head")
    except CommandError as exc:  # pragma: no cover - a broken migration chain is a bug
        raise StoreError(f"store migration failed: {exc}") from None


class Store:
    """The store of one pool (rows of other pools sharing a database are never touched)."""

    def __init__(self, engine: AsyncEngine, pool: str, clock: Callable[[], float]) -> None:
        self._engine = engine
        self.pool = pool
        self._clock = clock
        # (wave2: fleet-replicas) the leader's epoch: set on the control loop's store only
        self.epoch: int | None = None

    @property
    def engine(self) -> AsyncEngine:
        """The engine (for modules that add their own tables: leader, logs, leases)."""
        return self._engine

    def fenced(self, epoch: int) -> Store:
        """A store on the same engine whose writes all fail (Fenced) unless the pool's leader
        epoch is still ``epoch``. (wave2: fleet-replicas)"""
        other = Store(self._engine, self.pool, self._clock)
        other.epoch = epoch
        return other

    async def _fence(self, conn: Any) -> None:
        """Check the epoch inside a write's transaction (no-op unless fenced)."""
        if self.epoch is not None:  # (wave2: fleet-replicas)
            from comfyfleet.fleet.leader import check_fence

            await check_fence(conn, self.pool, self.epoch)

    # --- opening --------------------------------------------------------------------------

    @classmethod
    async def open(cls, url: str, *, pool: str, clock: Callable[[], float] = time.time) -> Store:
        """Connect, check the schema version, migrate to head and ensure the pool row."""
        engine = _engine(url)
        store = cls(engine, pool, clock)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(_migrate)
            await store._ensure_pool()
        except StoreError:
            await engine.dispose()
            raise
        except (OSError, SQLAlchemyError) as exc:
            await engine.dispose()
            raise StoreError(
                f"cannot open the store {redact_url(url)}: {_reason(exc)}",
                hint="check [store] url and that the database is running and reachable",
            ) from None
        return store

    async def close(self) -> None:
        """Close every connection."""
        await self._engine.dispose()

    async def _ensure_pool(self) -> None:
        async with self._engine.begin() as conn:
            found = await conn.scalar(select(pools.c.name).where(pools.c.name == self.pool))
            if found is not None:
                return
        try:
            async with self._engine.begin() as conn:
                await conn.execute(
                    insert(pools).values(
                        name=self.pool,
                        draining=False,
                        failures=0,
                        next_create_at=0.0,
                        updated_at=self._clock(),
                    )
                )
        except IntegrityError:  # another process inserted it first
            pass

    # --- reading --------------------------------------------------------------------------

    async def live(self) -> list[InstanceRow]:
        """Every row of the pool not in a final state (what reconciliation and policy see)."""
        query = (
            select(instances)
            .where(
                instances.c.pool == self.pool,
                instances.c.state.in_([s.value for s in LIVE]),
            )
            .order_by(instances.c.created_at, instances.c.id)
        )
        async with self._engine.connect() as conn:
            result = await conn.execute(query)
            return [row_of(m) for m in result.mappings()]

    async def rows(self, *, include_final: bool = False) -> list[InstanceRow]:
        """Rows of the pool, oldest first (final ones too with ``include_final``)."""
        if not include_final:
            return await self.live()
        query = select(instances).where(instances.c.pool == self.pool)
        async with self._engine.connect() as conn:
            result = await conn.execute(query.order_by(instances.c.created_at, instances.c.id))
            return [row_of(m) for m in result.mappings()]

    async def get(self, row_id: str) -> InstanceRow | None:
        """One row by id."""
        async with self._engine.connect() as conn:
            result = await conn.execute(select(instances).where(instances.c.id == row_id))
            m = result.mappings().first()
            return row_of(m) if m else None

    async def history(self, row_id: str) -> list[Transition]:
        """The transitions of one row, oldest first."""
        query = (
            select(transitions)
            .where(transitions.c.instance_id == row_id)
            .order_by(transitions.c.id)
        )
        async with self._engine.connect() as conn:
            result = await conn.execute(query)
            return [
                Transition(
                    instance_id=m["instance_id"],
                    from_state=State(m["from_state"]) if m["from_state"] else None,
                    to_state=State(m["to_state"]),
                    at=m["at"],
                    reason=m["reason"],
                )
                for m in result.mappings()
            ]

    async def pool_row(self) -> PoolRow:
        """The pool-level row."""
        async with self._engine.connect() as conn:
            result = await conn.execute(select(pools).where(pools.c.name == self.pool))
            m = result.mappings().one()
            return PoolRow(
                name=m["name"],
                draining=bool(m["draining"]),
                failures=m["failures"],
                next_create_at=m["next_create_at"],
            )

    # --- writing --------------------------------------------------------------------------

    async def add_intent(
        self, *, row_id: str, label: str, provider_kind: str, dph: float = 0.0
    ) -> InstanceRow:
        """Write and commit a ``requested`` row (the intent) before any provider call."""
        now = self._clock()
        values = {
            "id": row_id,
            "pool": self.pool,
            "label": label,
            "state": State.REQUESTED.value,
            "provider_kind": provider_kind,
            "dph": dph,
            "created_at": now,
            "updated_at": now,
            "state_since": now,
            "destroy_attempts": 0,
        }
        async with self._engine.begin() as conn:
            await self._fence(conn)  # (wave2: fleet-replicas)
            await conn.execute(insert(instances).values(**values))
            await conn.execute(
                insert(transitions).values(
                    instance_id=row_id,
                    from_state=None,
                    to_state=values["state"],
                    at=now,
                    reason="intent",
                )
            )
        row = await self.get(row_id)
        assert row is not None
        return row

    async def transition(
        self,
        row_id: str,
        old: State,
        new: State,
        *,
        reason: str | None = None,
        **fields: Any,
    ) -> bool:
        """Move ``row_id`` from ``old`` to ``new`` (with ``fields``) and log it; False when the
        row is no longer in ``old`` (someone else moved it first). Illegal moves raise."""
        check_transition(old, new)
        now = self._clock()
        values = {**fields, "state": new.value, "state_since": now, "updated_at": now}
        if new is State.FAILED and reason:
            values.setdefault("failure_reason", reason)
        async with self._engine.begin() as conn:
            await self._fence(conn)  # (wave2: fleet-replicas)
            result = await conn.execute(
                update(instances)
                .where(instances.c.id == row_id, instances.c.state == old.value)
                .values(**values)
            )
            if result.rowcount != 1:
                return False
            await conn.execute(
                insert(transitions).values(
                    instance_id=row_id,
                    from_state=old.value,
                    to_state=new.value,
                    at=now,
                    reason=reason,
                )
            )
        return True

    async def update(self, row_id: str, **fields: Any) -> None:
        """Change columns other than ``state`` (e.g. the destroy attempt count)."""
        if "state" in fields:
            raise ValueError("use transition() to change the state")
        async with self._engine.begin() as conn:
            await self._fence(conn)  # (wave2: fleet-replicas)
            await conn.execute(
                update(instances)
                .where(instances.c.id == row_id)
                .values(**fields, updated_at=self._clock())
            )

    async def set_draining(self, draining: bool) -> None:
        """Mark the pool draining (destroy-all: no more creates) or clear it (resume)."""
        await self._update_pool(draining=draining)

    async def note_create_failure(self, backoff: float, backoff_max: float) -> PoolRow:
        """Count one failed create/boot and push the next create back (exponential)."""
        row = await self.pool_row()
        failures = row.failures + 1
        delay = min(backoff * 2 ** (failures - 1), backoff_max)
        await self._update_pool(failures=failures, next_create_at=self._clock() + delay)
        return await self.pool_row()

    async def note_create_success(self) -> None:
        """An instance got past booting: creates may go at full speed again."""
        row = await self.pool_row()
        if row.failures or row.next_create_at:
            await self._update_pool(failures=0, next_create_at=0.0)

    async def _update_pool(self, **values: Any) -> None:
        async with self._engine.begin() as conn:
            await self._fence(conn)  # (wave2: fleet-replicas)
            await conn.execute(
                update(pools)
                .where(pools.c.name == self.pool)
                .values(**values, updated_at=self._clock())
            )


def _engine(url: str) -> AsyncEngine:
    full = async_url(url)
    if full.startswith("sqlite"):
        path = full.removeprefix("sqlite+aiosqlite:///")
        if path and path != ":memory:":
            parent = Path(path).parent
            if not parent.is_dir():
                raise StoreError(
                    f"store url {url!r}: the directory {parent} does not exist",
                    hint="create it, or point [store] url elsewhere",
                )
        # timeout: wait for a writer in another process (serve vs destroy-all) instead of failing
        engine = create_async_engine(full, connect_args={"timeout": 30})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    # pool_size 10: the control loop, the log sinks, the lease API's takes and the dashboard
    # hold connections at once, and connections beyond pool_size are closed when returned
    # (a reconnect, with its authentication, per transaction under load); 3 replicas at
    # 10 + 10 overflow stay under PostgreSQL's default max_connections of 100
    return create_async_engine(full, pool_pre_ping=True, pool_size=10, max_overflow=10)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers (pool status) never block the writer
    cursor.execute("PRAGMA synchronous=FULL")  # a committed intent survives a power cut
    cursor.close()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OperationalError) and exc.orig is not None:
        return str(exc.orig).strip().splitlines()[0]
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


__all__ = [
    "FINAL",
    "InstanceRow",
    "PoolRow",
    "Store",
    "StoreError",
    "Transition",
    "async_url",
    "metadata",
]
