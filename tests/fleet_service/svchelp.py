"""Helpers of the fleet service tests (a polled deadline, the pool's public key)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

#: a syntactically valid OpenSSH public key the double records at create time
PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHc0bWZsZWV0dGVzdGtleWZvcnRoZWRvdWJsZQ test"


async def wait_for(
    predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.2
) -> Any:
    """Await ``predicate()`` (sync or async) until truthy; AssertionError after ``timeout``."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(step)
