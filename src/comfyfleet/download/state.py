"""``ROOT/.comfyfleet/verified.json``: which final files were verified, and as what.

A file counts as verified only if it is recorded here *and* its current size, mtime_ns (and
inode, when recorded) still match the record — so a re-run can skip it without touching the
network, while a file that merely exists (copied in, truncated, replaced) is re-checked, never
trusted. A record is made from the ``stat`` of the exact inode that was verified and renamed
into place, never from a later look at the path.

Everything here blocks (stat, read, fsync): the scheduler calls it from a worker thread.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from comfyfleet.events import STATE_DIR, write_atomic

VERIFIED_FILE = "verified.json"


def _path(root: Path) -> Path:
    return Path(root) / STATE_DIR / VERIFIED_FILE


def _key(root: Path, path: Path) -> str:
    return os.path.relpath(path, root)


def _read(root: Path) -> dict[str, dict[str, Any]]:
    try:
        doc = json.loads(_path(root).read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _still_valid(rec: Any, st: os.stat_result) -> bool:
    return (
        isinstance(rec, dict)
        and st.st_size == rec.get("size")
        and st.st_mtime_ns == rec.get("mtime_ns")
        and rec.get("ino", st.st_ino) == st.st_ino
    )


def load_verified(root: Path) -> dict[str, dict[str, Any]]:
    """Records (key: path relative to ``root``) whose files still match the recorded stat."""
    out: dict[str, dict[str, Any]] = {}
    for key, rec in _read(root).items():
        try:
            st = (Path(root) / key).stat()
        except OSError:
            continue
        if _still_valid(rec, st):
            out[key] = rec
    return out


class VerifiedState:
    """The verified-file record of one root, updated as files are verified (thread-safe)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.records = load_verified(self.root)
        self._lock = threading.Lock()

    def record(self, path: Path, sha256: str, url: str, st: os.stat_result) -> None:
        """Record ``path`` as holding bytes with ``sha256``; ``st`` is the verified inode's stat."""
        with self._lock:
            self.records[_key(self.root, path)] = {
                "size": st.st_size,
                "sha256": sha256,
                "mtime_ns": st.st_mtime_ns,
                "ino": st.st_ino,
                "url": url,
            }
            self._save()

    def _save(self) -> None:
        # Keep records of files another manifest verified (they may still be valid).
        merged = {**_read(self.root), **self.records}
        for key in list(merged):
            if not (self.root / key).exists():
                merged.pop(key)
        _path(self.root).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(_path(self.root), json.dumps(merged, indent=1, sort_keys=True) + "\n")
