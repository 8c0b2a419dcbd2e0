"""One way to run a local aiohttp server: ``async with server`` or from a background thread.

The model server, the registry double and the tests' Vast.ai double all serve the same way, so
synchronous tests, subprocess tests and the demo can use any of them without an event loop.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Self

from aiohttp import web


class LoopbackServer:
    """Mixin: subclasses implement :meth:`start` (which sets ``self._runner``)."""

    #: the background thread's name, and how the server is named in a start-up failure
    thread_name = "server"
    _runner: web.AppRunner | None = None
    _thread: threading.Thread | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _stop_event: asyncio.Event | None = None

    async def start(self) -> None:
        """Start serving on loopback."""
        raise NotImplementedError

    async def stop(self) -> None:
        """Stop serving (recorded state stays for assertions)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    def start_in_thread(self) -> None:
        """Serve from a background thread with its own loop (synchronous and subprocess tests)."""
        ready = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            stop = self._stop_event = asyncio.Event()

            async def main() -> None:
                await self.start()
                ready.set()
                await stop.wait()
                await self.stop()

            loop.run_until_complete(main())
            loop.close()

        self._thread = threading.Thread(target=serve, name=self.thread_name, daemon=True)
        self._thread.start()
        if not ready.wait(15):
            raise RuntimeError(f"{self.thread_name} did not start within 15 s")

    def stop_thread(self) -> None:
        """Stop a server started with :meth:`start_in_thread` (a second call does nothing)."""
        if self._loop is not None and self._stop_event is not None:
            self._loop.call_soon_threadsafe(self._stop_event.set)
        if self._thread is not None:
            self._thread.join(15)
            self._thread = None
        self._loop = self._stop_event = None
