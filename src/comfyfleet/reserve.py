"""A little disk space held back for a run's verdict (``ROOT/.comfyfleet/reserve``).

When another process fills the disk mid-run, the state writes fail with ENOSPC; the run must
still end with its final marker line, its sentinel and ``status.json``. The run holds a small
file with real blocks from its start and deletes it just before writing those last few files.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

#: enough for the final status.json, the last events, the marker line and the sentinel
RESERVE_BYTES = 256 * 1024


class SpaceReserve:
    """A file of ``size`` allocated bytes at ``path``: :meth:`hold` it, :meth:`release` it."""

    def __init__(self, path: Path, size: int = RESERVE_BYTES) -> None:
        self.path = Path(path)
        self.size = size

    def hold(self) -> bool:
        """Allocate the reserve (kept if already there); False when the disk has no room for it."""
        try:
            if self.path.is_file() and self.path.stat().st_blocks * 512 >= self.size:
                return True
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                # Real bytes, not fallocate: every filesystem counts written pages as used
                # (tmpfs at once, ext4's delayed allocation by reservation), and 256 KiB into
                # the page cache costs the caller — often the event loop — nothing to speak of.
                os.pwrite(fd, bytes(self.size), 0)
            finally:
                os.close(fd)
            return True
        except OSError:
            self.release()  # a partial reserve only takes space from the run itself
            return False

    def release(self) -> None:
        """Give the space back (idempotent)."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
