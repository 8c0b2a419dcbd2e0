"""Where the dashboard reads what the instance rows do not hold: logs and progress.

:class:`StoreLogs` (what ``pool serve`` uses) reads the provisioning logs that the follower
stores for every provider, the local one included (:mod:`comfyfleet.fleet.logstore`), with
one query per pass for all instances: the chunks stored since the last pass. :class:`FileLogs`
reads log files on this machine (the follower's mirror or a local slot's own root), for
tests and for setups without a store log. Both answer the :class:`LogSource` protocol.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import func, select

from comfyfleet.fleet.store import InstanceRow, Store

#: the most of one log read for a panel that opens (the panel shows the tail)
TAIL_BYTES = 64 * 1024
LOG = "provision.log"


@dataclass(frozen=True)
class Progress:
    """Download progress of one instance's provision."""

    phase: str | None
    bytes_done: int
    bytes_total: int
    speed: float | None = None


@dataclass(frozen=True)
class LogUpdate:
    """New log bytes of one instance: ``data`` starts at ``offset`` of run ``run``."""

    run: str
    offset: int
    data: bytes
    progress: Progress | None


#: what the hub holds per instance: (run, next offset)
Position = tuple[str, int]


class LogSource(Protocol):
    """Log bytes and progress for the dashboard's instances."""

    async def poll(
        self, rows: list[InstanceRow], positions: dict[str, Position]
    ) -> dict[str, LogUpdate]:
        """For each row, what is new since its position (a new run starts at its offset 0,
        or at its tail); rows with nothing new may be left out."""
        ...


def progress_of(doc: Any) -> Progress | None:
    """A :class:`Progress` from a ``status.json``-shaped document (None when malformed)."""
    try:
        return Progress(
            phase=str(doc["phase"]) if doc.get("phase") else None,
            bytes_done=max(0, int(doc.get("bytes_done") or 0)),
            bytes_total=max(0, int(doc.get("bytes_total") or 0)),
            speed=float(doc["speed"]) if doc.get("speed") else None,
        )
    except (KeyError, ValueError, TypeError, AttributeError):
        return None


class FileLogs:
    """``provision.log`` + ``status.json`` files: a local slot's root or the mirror."""

    def __init__(self, *, local_base: Path | None = None, mirror: Path | None = None) -> None:
        self.local_base = local_base
        self.mirror = mirror

    def state_dir(self, row: InstanceRow) -> Path | None:
        """The directory holding this instance's ``provision.log``, if any."""
        if row.provider_kind == "local" and self.local_base is not None:
            slot = row.provider_id or ""
            if slot.isdigit():  # slot names are numbers; anything else is no path of ours
                return self.local_base / "slots" / slot / "root" / ".comfyfleet"
            return None
        if self.mirror is not None and row.id.isalnum():
            return self.mirror / row.id
        return None

    def progress(self, row: InstanceRow) -> Progress | None:
        """The provision's ``status.json``, when there is one."""
        d = self.state_dir(row)
        if d is None:
            return None
        try:
            return progress_of(json.loads((d / "status.json").read_text()))
        except (OSError, ValueError):
            return None

    async def poll(
        self, rows: list[InstanceRow], positions: dict[str, Position]
    ) -> dict[str, LogUpdate]:
        """See :meth:`LogSource.poll` (small reads of local files: they run on the loop)."""
        out = {}
        for row in rows:
            d = self.state_dir(row)
            if d is None:
                continue
            run, offset = positions.get(row.id, ("", 0))
            try:
                with open(d / LOG, "rb") as fh:
                    ident = str(os.fstat(fh.fileno()).st_ino)  # a rotated log is a new file
                    size = fh.seek(0, 2)
                    if ident != run or size < offset:
                        offset = max(0, size - TAIL_BYTES)
                    fh.seek(offset)
                    data = fh.read(size - offset)
            except OSError:
                continue
            out[row.id] = LogUpdate(ident, offset, data, self.progress(row))
        return out


class StoreLogs:
    """The follower's logs in the store (every provider), read in one query per pass."""

    def __init__(self, store: Store, *, files: FileLogs | None = None) -> None:
        self.store = store
        self.files = files  # status.json of local slots, when the store has no progress
        self._last_chunk = 0

    async def poll(
        self, rows: list[InstanceRow], positions: dict[str, Position]
    ) -> dict[str, LogUpdate]:
        """See :meth:`LogSource.poll`."""
        try:
            from comfyfleet.fleet import logstore as ls
        except ImportError:  # a build without the store log: nothing to show yet
            return {}

        ids = [r.id for r in rows]
        if not ids:
            return {}
        engine = ls.engine_of(self.store)
        runs: dict[str, tuple[str, int, Any]] = {}
        async with engine.connect() as conn:
            q = select(
                ls.provision_runs.c.instance_id,
                ls.provision_runs.c.run_id,
                ls.provision_runs.c.seq,
                ls.provision_runs.c.progress,
            ).where(ls.provision_runs.c.instance_id.in_(ids))
            for iid, run_id, seq, progress in (await conn.execute(q)).all():
                if iid not in runs or seq > runs[iid][1]:
                    runs[iid] = (run_id, seq, progress)
            top = await conn.scalar(select(func.max(ls.log_chunks.c.id))) or 0
            new: dict[str, list[tuple[int, bytes]]] = {}
            if self._last_chunk:
                q2 = (
                    select(
                        ls.log_chunks.c.instance_id,
                        ls.log_chunks.c.run_id,
                        ls.log_chunks.c.offset,
                        ls.log_chunks.c.data,
                    )
                    .where(
                        ls.log_chunks.c.id > self._last_chunk,
                        ls.log_chunks.c.id <= top,
                        ls.log_chunks.c.name == LOG,
                    )
                    .order_by(ls.log_chunks.c.id)
                )
                for iid, run_id, offset, data in (await conn.execute(q2)).all():
                    if iid in runs and runs[iid][0] == run_id:
                        new.setdefault(iid, []).append((offset, bytes(data)))
        self._last_chunk = top
        out: dict[str, LogUpdate] = {}
        by_id = {r.id: r for r in rows}
        for iid, (run_id, _seq, progress_json) in runs.items():
            progress = None
            if progress_json:
                try:
                    progress = progress_of(json.loads(progress_json))
                except ValueError:
                    progress = None
            if (progress is None or not progress.bytes_total) and self.files is not None:
                progress = self.files.progress(by_id[iid]) or progress
            run, offset = positions.get(iid, ("", 0))
            chunks = new.get(iid, [])
            if run != run_id or not _contiguous(offset, chunks):
                # a new run, a first look, or a chunk committed out of id order: re-read
                data = await ls.read_bytes(self.store, iid, run_id, LOG, 0)
                start = max(0, len(data) - TAIL_BYTES)
                out[iid] = LogUpdate(run_id, start, data[start:], progress)
            else:
                out[iid] = LogUpdate(run_id, offset, b"".join(c for _, c in chunks), progress)
        return out


def _contiguous(offset: int, chunks: Iterable[tuple[int, bytes]]) -> bool:
    for at, data in chunks:
        if at != offset:
            return False
        offset += len(data)
    return True
