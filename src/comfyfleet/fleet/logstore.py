"""Provisioning logs in the store: runs, append-only chunks + follow checkpoints, progress.

Each provisioning run of an instance (``provision_runs``) has two followed files,
``provision.log`` and ``events.jsonl``. Their bytes are stored in append-only chunks
(``log_chunks``), and the follow checkpoint of the position after the last stored chunk is
written in the same transaction (``log_checkpoints``): what the store holds is always a prefix
of the remote file plus the checkpoint of exactly that prefix, so any replica can serve the
log and a restarted leader resumes from the store without loss or duplicates.

The local mirror ``logs/<instance>/<run>/<file>`` (with ``logs/<instance>/<file>`` linking to
the latest run) is rebuilt from the store when a sink opens, then appended as lines arrive:
bytes a killed process wrote after its last commit are dropped with the rest of the file.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from comfyfleet.fleet.store import Store, metadata
from comfyfleet.names import plain_name

FileName = Literal["provision.log", "events.jsonl"]
#: at most this much log text per read_log call
READ_LIMIT = 1 << 20

provision_runs = Table(
    "provision_runs",
    metadata,
    Column("instance_id", String(32), primary_key=True),
    Column("run_id", String(32), primary_key=True),
    Column("seq", Integer, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("ended_at", Float),
    Column("outcome", String(16)),
    Column("reason", Text),
    Column("progress", Text),
    Column("comfyui_port", Integer),  # where the run's ComfyUI listens (comfyui_port = "auto")
    Column("updated_at", Float, nullable=False),
)

log_chunks = Table(
    "log_chunks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("instance_id", String(32), nullable=False),
    Column("run_id", String(32), nullable=False),
    Column("name", String(16), nullable=False),
    Column("offset", BigInteger, nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("at", Float, nullable=False),
)

log_checkpoints = Table(
    "log_checkpoints",
    metadata,
    Column("instance_id", String(32), primary_key=True),
    Column("run_id", String(32), primary_key=True),
    Column("name", String(16), primary_key=True),
    Column("checkpoint", Text, nullable=False),
    Column("size", BigInteger, nullable=False),
)


def engine_of(store: Store) -> AsyncEngine:
    """The store's engine (the fleet modules' tables share its connection pool)."""
    return store.engine


@dataclass(frozen=True)
class RunRow:
    """One provisioning run of an instance."""

    instance_id: str
    run_id: str
    seq: int
    started_at: float
    ended_at: float | None
    outcome: str | None
    reason: str | None


# --- runs ------------------------------------------------------------------------------------


async def current_run(store: Store, instance_id: str) -> RunRow | None:
    """The instance's latest run (None: never provisioned)."""
    query = (
        select(provision_runs)
        .where(provision_runs.c.instance_id == instance_id)
        .order_by(provision_runs.c.seq.desc())
        .limit(1)
    )
    async with engine_of(store).connect() as conn:
        m = (await conn.execute(query)).mappings().first()
    if m is None:
        return None
    return RunRow(
        m["instance_id"], m["run_id"], m["seq"], m["started_at"], m["ended_at"],
        m["outcome"], m["reason"],
    )  # fmt: skip


async def begin_run(store: Store, instance_id: str) -> RunRow:
    """Record a new run (``r1``, ``r2``, …) before anything starts it (state before action)."""
    last = await current_run(store, instance_id)
    seq = (last.seq if last else 0) + 1
    now = store._clock()
    async with engine_of(store).begin() as conn:
        await conn.execute(
            insert(provision_runs).values(
                instance_id=instance_id, run_id=f"r{seq}", seq=seq, started_at=now, updated_at=now
            )
        )
    run = await current_run(store, instance_id)
    assert run is not None
    return run


async def end_run(
    store: Store,
    instance_id: str,
    run_id: str,
    outcome: str,
    reason: str,
    *,
    comfyui_port: int | None = None,
) -> None:
    """Record how a run ended (kept with its log; ``reason`` empty when it succeeded)."""
    now = store._clock()
    async with engine_of(store).begin() as conn:
        await conn.execute(
            update(provision_runs)
            .where(provision_runs.c.instance_id == instance_id, provision_runs.c.run_id == run_id)
            .values(
                outcome=outcome, reason=reason, ended_at=now, updated_at=now,
                comfyui_port=comfyui_port,
            )
        )  # fmt: skip


async def comfyui_port(store: Store, instance_id: str) -> int | None:
    """The port ComfyUI listens on (127.0.0.1 of the instance) after its last complete run."""
    query = (
        select(provision_runs.c.comfyui_port)
        .where(provision_runs.c.instance_id == instance_id, provision_runs.c.outcome == "complete")
        .order_by(provision_runs.c.seq.desc())
        .limit(1)
    )
    async with engine_of(store).connect() as conn:
        return await conn.scalar(query)


async def instance_progress(store: Store, instance_id: str) -> dict[str, Any] | None:
    """The latest run's structured progress (phase, bytes done/total, speed), or None."""
    query = (
        select(provision_runs.c.progress, provision_runs.c.outcome)
        .where(provision_runs.c.instance_id == instance_id)
        .order_by(provision_runs.c.seq.desc())
        .limit(1)
    )
    async with engine_of(store).connect() as conn:
        m = (await conn.execute(query)).mappings().first()
    if m is None:
        return None
    doc = json.loads(m["progress"]) if m["progress"] else {"phase": "starting"}
    doc.setdefault("bytes_done", 0)
    doc.setdefault("bytes_total", 0)
    doc.setdefault("speed", 0)
    return doc


# --- reading logs ----------------------------------------------------------------------------


async def read_bytes(
    store: Store, instance_id: str, run_id: str, name: FileName, start: int = 0, limit: int = -1
) -> bytes:
    """The stored bytes of one run's file from ``start`` (up to ``limit``; -1: all)."""
    query = (
        select(log_chunks.c.offset, log_chunks.c.data)
        .where(
            log_chunks.c.instance_id == instance_id,
            log_chunks.c.run_id == run_id,
            log_chunks.c.name == name,
            log_chunks.c.offset + func.length(log_chunks.c.data) > start,
        )
        .order_by(log_chunks.c.offset)
    )
    out = bytearray()
    async with engine_of(store).connect() as conn:
        for offset, data in (await conn.execute(query)).all():
            piece = bytes(data)[max(0, start - offset) :]
            out += piece
            if 0 <= limit <= len(out):
                break
    return bytes(out if limit < 0 else out[:limit])


async def read_log(store: Store, instance_id: str, from_offset: int = 0) -> tuple[int, str]:
    """The latest run's provision.log from ``from_offset``: ``(next offset, text)``.

    Only whole lines are returned (a line still being written comes with the next call), so
    ``next`` never splits a line or a UTF-8 character.
    """
    run = await current_run(store, instance_id)
    start = max(0, int(from_offset))
    if run is None:
        return start, ""
    data = await read_bytes(store, instance_id, run.run_id, "provision.log", start, READ_LIMIT)
    cut = data.rfind(b"\n") + 1
    if cut == 0 and len(data) >= READ_LIMIT:
        cut = len(data)  # one enormous line: hand it over in pieces
    return start + cut, data[:cut].decode("utf-8", "replace")


async def log_tail(store: Store, instance_id: str, n: int = 20) -> list[str]:
    """The last ``n`` lines of the latest run's provision.log."""
    run = await current_run(store, instance_id)
    if run is None or n <= 0:
        return []
    async with engine_of(store).connect() as conn:
        size = await conn.scalar(
            select(log_checkpoints.c.size).where(
                log_checkpoints.c.instance_id == instance_id,
                log_checkpoints.c.run_id == run.run_id,
                log_checkpoints.c.name == "provision.log",
            )
        )
    size = int(size or 0)
    window = 512 * max(n, 1)
    while True:
        start = max(0, size - window)
        data = await read_bytes(store, instance_id, run.run_id, "provision.log", start)
        lines = data.decode("utf-8", "replace").splitlines()
        if start == 0 or len(lines) > n:
            return lines[-n:]
        window *= 4


# --- the sink --------------------------------------------------------------------------------


class StoreLogSink:
    """A :class:`comfyfleet.logstream.sink.LogSink` on the store, mirrored to a local file.

    ``append`` writes the mirror at once and queues the chunk; ``flush`` commits queued chunks
    and the last checkpoint in one transaction. Flushes come from worker threads (the
    follower's fsync step, the local tail); they run the write on the event loop and wait.
    A flush on the loop itself (the follower's last one, or on cancellation) only schedules
    the write: :meth:`drain` waits for it.
    """

    def __init__(self, runs: StoreRunSinks, name: FileName, checkpoint: dict[str, Any] | None,
                 size: int, mirror: Path, link: Path) -> None:  # fmt: skip
        self.runs = runs
        self.name = name
        self._checkpoint = checkpoint
        self._size = size
        self.mirror = mirror
        self.link = link
        self._fd: int | None = None
        self._pending: list[bytes] = []
        self._latest: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._write_lock = asyncio.Lock()
        self._scheduled: list[asyncio.Future[None]] = []

    def resume(self) -> dict[str, Any] | None:
        """The checkpoint stored with the last chunk (the mirror already matches it)."""
        return self._checkpoint

    def append(self, chunk: bytes, checkpoint: dict[str, Any]) -> None:
        """Mirror ``chunk`` now; queue it with its checkpoint for the next flush."""
        with self._lock:
            if self._fd is not None and chunk:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(self._fd, view) :]
            if chunk:
                self._pending.append(bytes(chunk))
            self._latest = checkpoint

    def flush(self) -> None:
        """Commit queued chunks + checkpoint to the store (waits when called off the loop)."""
        loop = self.runs.loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._scheduled.append(asyncio.ensure_future(self._write()))
            return
        fut: Future[None] = asyncio.run_coroutine_threadsafe(self._write(), loop)
        fut.result()
        # here, in the worker thread: _write must never wait for a worker thread itself (the
        # executor may be full of flushes waiting for it)
        fd = self._fd
        if fd is not None:
            _fsync_quiet(fd)

    def close(self) -> None:
        """Close the mirror (queued chunks stay queued for :meth:`drain`)."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    async def open_mirror(self) -> None:
        """Rebuild the mirror from the store and point the instance's link at it."""
        data = await read_bytes(self.runs.store, self.runs.instance_id, self.runs.run_id, self.name)
        self.mirror.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.mirror, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        self._fd = fd
        _point(self.link, self.mirror)

    async def drain(self) -> None:
        """Wait for scheduled writes, then commit whatever is still queued."""
        while self._scheduled:
            await self._scheduled.pop(0)
        await self._write()

    async def _write(self) -> None:
        async with self._write_lock:  # one writer at a time keeps the offsets in order
            with self._lock:
                chunks, self._pending = self._pending, []
                cp = self._latest
                progress = self.runs.progress if self.name == "events.jsonl" else None
            if cp is None or (not chunks and cp == self._checkpoint and progress is None):
                return
            data = b"".join(chunks)
            r = self.runs
            now = r.store._clock()
            key = (
                log_checkpoints.c.instance_id == r.instance_id,
                log_checkpoints.c.run_id == r.run_id,
                log_checkpoints.c.name == self.name,
            )
            try:
                async with engine_of(r.store).begin() as conn:
                    if data:
                        await conn.execute(
                            insert(log_chunks).values(
                                instance_id=r.instance_id, run_id=r.run_id, name=self.name,
                                offset=self._size, data=data, at=now,
                            )
                        )  # fmt: skip
                    values = {"checkpoint": json.dumps(cp), "size": self._size + len(data)}
                    done = await conn.execute(update(log_checkpoints).where(*key).values(**values))
                    if done.rowcount != 1:
                        await conn.execute(
                            insert(log_checkpoints).values(
                                instance_id=r.instance_id, run_id=r.run_id, name=self.name,
                                **values,
                            )
                        )  # fmt: skip
                    if progress is not None:
                        await conn.execute(
                            update(provision_runs)
                            .where(
                                provision_runs.c.instance_id == r.instance_id,
                                provision_runs.c.run_id == r.run_id,
                            )
                            .values(progress=json.dumps(progress), updated_at=now)
                        )
            except BaseException:
                with self._lock:  # not stored: keep it for the next flush
                    self._pending[:0] = chunks
                raise
            self._size += len(data)
            self._checkpoint = cp


class StoreRunSinks:
    """The two sinks of one run (an agent's ``RunSinks``) plus the run's latest progress."""

    def __init__(self, store: Store, instance_id: str, run_id: str, logs_dir: Path) -> None:
        self.store = store
        self.instance_id = plain_name(instance_id, what="instance id")
        self.run_id = plain_name(run_id, what="run id")
        self.instance_dir = logs_dir / self.instance_id
        self.run_dir = self.instance_dir / self.run_id
        self.loop = asyncio.get_running_loop()
        self.progress: dict[str, Any] | None = None
        self._sinks: dict[str, StoreLogSink] = {}

    @classmethod
    async def open(
        cls, store: Store, instance_id: str, run_id: str, logs_dir: Path
    ) -> StoreRunSinks:
        """Load both checkpoints and rebuild both mirrors from the store."""
        runs = cls(store, instance_id, run_id, logs_dir)
        for name in ("events.jsonl", "provision.log"):  # provision.log last: its link is newest
            cp, size = await _checkpoint(store, runs.instance_id, runs.run_id, name)
            sink = StoreLogSink(runs, name, cp, size, runs.run_dir / name, runs.instance_dir / name)  # type: ignore[arg-type]
            await sink.open_mirror()
            runs._sinks[name] = sink
        return runs

    def sink(self, name: FileName) -> StoreLogSink:
        """The sink of ``provision.log`` or ``events.jsonl``."""
        return self._sinks[name]

    def set_progress(self, progress: dict[str, Any]) -> None:
        """The latest structured progress (stored with the next events.jsonl flush)."""
        with self._sinks["events.jsonl"]._lock:
            self.progress = dict(progress)

    async def drain(self) -> None:
        """Commit everything still queued, then close the mirrors."""
        for sink in self._sinks.values():
            await sink.drain()
            sink.close()


async def _checkpoint(
    store: Store, instance_id: str, run_id: str, name: str
) -> tuple[dict[str, Any] | None, int]:
    async with engine_of(store).connect() as conn:
        m = (
            (
                await conn.execute(
                    select(log_checkpoints).where(
                        log_checkpoints.c.instance_id == instance_id,
                        log_checkpoints.c.run_id == run_id,
                        log_checkpoints.c.name == name,
                    )
                )
            )
            .mappings()
            .first()
        )
    if m is None:
        return None, 0
    return json.loads(m["checkpoint"]), int(m["size"])


def _fsync_quiet(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError:  # closed meanwhile: the store holds the bytes; the mirror is rebuilt
        pass


def _point(link: Path, target: Path) -> None:
    """Replace ``link`` atomically with a relative symlink to ``target``."""
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(os.path.relpath(target, link.parent))
    os.replace(tmp, link)
