"""A decaying blocklist of machines that failed us (SkyPilot excludes them per attempt only).

A machine that failed (exited, OCI error, stuck loading, offline) is skipped by offer search for
``base`` seconds; each repeat within ``forget_after`` of the last block doubles the time, up to
``cap``. After a quiet ``forget_after`` the machine starts over with a clean record, because a
host's trouble is usually temporary (a bad disk gets replaced, a link comes back).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Entry:
    """One blocked machine."""

    until: float
    strikes: int
    reason: str


class Blocklist:
    """Machine ids blocked until a time that doubles per repeat and decays when quiet."""

    def __init__(
        self,
        *,
        base: float = 1800.0,
        cap: float = 24 * 3600.0,
        forget_after: float = 24 * 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base = base
        self.cap = cap
        self.forget_after = forget_after
        self.clock = clock
        self._entries: dict[str, Entry] = {}

    def block(self, machine_id: str, reason: str) -> float:
        """Block ``machine_id``; returns for how many seconds."""
        now = self.clock()
        old = self._entries.get(machine_id)
        strikes = 1
        if old is not None and now - old.until < self.forget_after:
            strikes = old.strikes + 1
        seconds = min(self.cap, self.base * 2 ** (strikes - 1))
        self._entries[machine_id] = Entry(now + seconds, strikes, reason)
        return seconds

    def is_blocked(self, machine_id: str) -> bool:
        """Whether search must skip this machine now."""
        entry = self._entries.get(machine_id)
        if entry is None:
            return False
        now = self.clock()
        if now - entry.until >= self.forget_after:
            del self._entries[machine_id]  # quiet long enough: forgotten
        return now < entry.until

    def reason(self, machine_id: str) -> str | None:
        """Why a blocked machine is blocked (None when it is not)."""
        entry = self._entries.get(machine_id)
        return entry.reason if entry is not None and self.is_blocked(machine_id) else None
