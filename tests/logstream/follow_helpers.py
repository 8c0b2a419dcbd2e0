"""Helpers shared by the logstream tests (a unique module name: several test folders have
a conftest.py, so ``from conftest import`` would be ambiguous)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from comfyfleet.logstream import FollowOptions, ReadTuning

DONE = b"PROVISIONING COMPLETE\n"


def lines(start: int, stop: int, width: int = 40) -> bytes:
    """Numbered lines, each unique."""
    return b"".join(
        f"line {i:06d} ".encode().ljust(width, b".") + b"\n" for i in range(start, stop)
    )


def append(path: Path, data: bytes) -> None:
    """Append ``data`` to ``path`` as a writer process would (open, write, close)."""
    with path.open("ab") as fh:
        fh.write(data)


def fast_options(timeout: float = 30.0, **kw) -> FollowOptions:
    """Short drain wait and backoff so the tests run in seconds."""
    tuning = ReadTuning(rotate_wait=0.4, stall=5.0)
    return FollowOptions(timeout=timeout, tuning=tuning, backoff_base=0.05, backoff_cap=0.5, **kw)


async def until(predicate: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    """Poll ``predicate`` in the event loop until true (AssertionError after ``timeout``)."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(0.01)


def read(path: Path) -> bytes:
    """File content, or b'' when it does not exist yet."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""
