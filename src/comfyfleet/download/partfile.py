"""``NAME.part`` (the bytes, preallocated, written by offset) and ``NAME.part.json`` (the sidecar).

The sidecar records what the bytes are (url, validator, size) and which ranges are complete,
so a killed run resumes instead of restarting (reference/downloaders.md §1.2: aria2's control
file holds no validator; ours does). It is written atomically and only after the bytes it
describes were handed to the kernel with ``pwrite``, so a crash never claims unwritten bytes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comfyfleet.download.segments import Range, merge
from comfyfleet.errors import DownloadError, disk_full
from comfyfleet.events import write_atomic

PART_SUFFIX = ".part"
SIDECAR_SUFFIX = ".part.json"

#: test hook: called as ``hook(path, offset, length)`` before every pwrite; may raise OSError
write_fault: Callable[[Path, int, int], None] | None = None


def part_path(final: Path) -> Path:
    return final.with_name(final.name + PART_SUFFIX)


def sidecar_path(final: Path) -> Path:
    return final.with_name(final.name + SIDECAR_SUFFIX)


def disk_error(exc: OSError, path: Path) -> DownloadError:
    """Map an OSError from writing ``path`` to the error a person can act on."""
    full = disk_full(exc, path.parent)  # ENOSPC and EDQUOT, mapped in one place
    if full is not None:
        return full
    return DownloadError(f"cannot write {path}: {exc.strerror or exc}")


@dataclass
class Identity:
    """What the bytes in a part file are: resume only when all known fields agree."""

    url: str
    size: int | None
    sha256: str | None
    etag: str | None

    def matches(self, other: dict[str, Any]) -> bool:
        if other.get("size") != self.size or other.get("url") != self.url:
            return False
        if self.sha256 and other.get("sha256"):
            # The content hash decides (a mirror has another ETag for the same bytes).
            return self.sha256 == other["sha256"]
        for key in ("sha256", "etag"):
            mine, theirs = getattr(self, key), other.get(key)
            if mine and theirs and mine != theirs:
                return False
        return True


class PartFile:
    """The part file of one download and its sidecar."""

    def __init__(self, final: Path, identity: Identity) -> None:
        self.final = final
        self.path = part_path(final)
        self.sidecar = sidecar_path(final)
        self.identity = identity
        self.fd: int | None = None

    def resume_ranges(self) -> list[Range]:
        """Completed ranges recorded by an earlier run for the same bytes, else ``[]``."""
        try:
            doc = json.loads(self.sidecar.read_text())
            if not self.identity.matches(doc) or not self.path.exists():
                return []
            # Resume only bytes provably of the version still served: with a validator (sent
            # as If-Range) or a sha256 that checks the whole file. Else restart from byte 0:
            # an old prefix joined to a new rest would pass the size check as "verified".
            validator = self.identity.etag or doc.get("etag")
            if not validator and not self.identity.sha256:
                return []
            ranges = merge([(int(s), int(e)) for s, e in doc.get("done", [])])
            size = self.identity.size
            if size is not None and self.path.stat().st_size < size:
                return []
            if ranges:
                self.identity.etag = validator  # the validator of the bytes we keep
            return ranges
        except (OSError, ValueError, TypeError):
            return []

    def open(self, *, keep: bool) -> None:
        """Open (``keep``: as is, to resume) or recreate the part file, preallocated.

        Blocking (glibc emulates ``posix_fallocate`` by writing blocks where the filesystem
        cannot allocate): call it from a worker thread. The part file is locked while open,
        so two writers can never share one (the bytes hashed are the bytes that land).
        """
        self.final.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise disk_error(exc, self.final) from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.close()
            raise DownloadError(
                f"{self.path} is being written by another download",
                hint="two entries or two runs must never write one file; wait for the other",
            ) from None
        try:
            if not keep:
                os.ftruncate(self.fd, 0)
            if self.identity.size:
                # Allocates for real (unlike ftruncate), so a full disk fails here, up front.
                os.posix_fallocate(self.fd, 0, self.identity.size)
        except OSError as exc:
            self.close()
            raise disk_error(exc, self.final) from None
        if not keep:
            self.save([])

    def pwrite(self, data: bytes | memoryview, offset: int) -> None:
        """Write ``data`` at ``offset`` (call from a worker thread for large buffers)."""
        if self.fd is None:
            raise DownloadError(f"{self.path} is closed")
        if write_fault is not None:
            try:
                write_fault(self.path, offset, len(data))
            except OSError as exc:
                raise disk_error(exc, self.final) from None
        view = memoryview(data)
        try:
            while view:
                n = os.pwrite(self.fd, view, offset)
                view = view[n:]
                offset += n
        except OSError as exc:
            raise disk_error(exc, self.final) from None

    def read(self, offset: int, length: int) -> bytes:
        if self.fd is None:
            raise DownloadError(f"{self.path} is closed")
        return os.pread(self.fd, length, offset)

    def save(self, done: list[Range]) -> None:
        """Record the completed ranges (atomically; no fsync — a crash loses at most a bit)."""
        doc = {**self.identity.__dict__, "done": [list(r) for r in done]}
        with contextlib.suppress(OSError):
            write_atomic(self.sidecar, json.dumps(doc), fsync=False)

    def finalize(self) -> os.stat_result:
        """fsync, rename over the final path (still locked), fsync the directory, drop the
        sidecar; return the stat of the inode that landed (what verified.json records)."""
        if self.fd is None:
            raise DownloadError(f"{self.path} is closed")
        size = self.identity.size
        if size is not None and os.fstat(self.fd).st_size != size:
            os.ftruncate(self.fd, size)
        os.fsync(self.fd)
        landed = os.fstat(self.fd)
        try:
            os.replace(self.path, self.final)
        finally:
            self.close()
        dfd = os.open(self.final.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        with contextlib.suppress(FileNotFoundError):
            self.sidecar.unlink()
        return landed

    def discard(self) -> None:
        """Remove the part file and its sidecar (its bytes are known to be wrong)."""
        self.close()
        for p in (self.path, self.sidecar):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None
