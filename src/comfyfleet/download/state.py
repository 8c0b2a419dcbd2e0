"""``ROOT/.comfyfleet/verified.json``: which final files were verified, and as what.

A file counts as verified only if it is recorded here *and* its current size and mtime_ns
still match the record — so a re-run can skip it without touching the network, while a file
that merely exists (copied in, truncated, edited) is re-checked, never trusted.
"""

from __future__ import annotations

import json
import os
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


def load_verified(root: Path) -> dict[str, dict[str, Any]]:
    """Records (key: path relative to ``root``) whose files still have the recorded size+mtime."""
    out: dict[str, dict[str, Any]] = {}
    for key, rec in _read(root).items():
        try:
            st = (Path(root) / key).stat()
        except OSError:
            continue
        if (
            isinstance(rec, dict)
            and st.st_size == rec.get("size")
            and st.st_mtime_ns == rec.get("mtime_ns")
        ):
            out[key] = rec
    return out


class VerifiedState:
    """The verified-file record of one root, updated as files are verified."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.records = load_verified(self.root)

    def get(self, path: Path) -> dict[str, Any] | None:
        return self.records.get(_key(self.root, path))

    def find_by_url(self, folder_dir: Path, url: str) -> tuple[Path, dict[str, Any]] | None:
        """A verified file in ``folder_dir`` downloaded from ``url`` (when the name is unknown)."""
        for key, rec in self.records.items():
            path = self.root / key
            if path.parent == folder_dir and rec.get("url") == url:
                return path, rec
        return None

    def record(self, path: Path, sha256: str, url: str) -> None:
        st = path.stat()
        self.records[_key(self.root, path)] = {
            "size": st.st_size,
            "sha256": sha256,
            "mtime_ns": st.st_mtime_ns,
            "url": url,
        }
        self._save()

    def forget(self, path: Path) -> None:
        if self.records.pop(_key(self.root, path), None) is not None:
            self._save()

    def _save(self) -> None:
        # Keep records of files another manifest verified (they may still be valid).
        merged = {**_read(self.root), **self.records}
        for key in list(merged):
            if not (self.root / key).exists():
                merged.pop(key)
        _path(self.root).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(_path(self.root), json.dumps(merged, indent=1, sort_keys=True) + "\n")
