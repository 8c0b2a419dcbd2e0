"""A loopback TCP forwarder whose traffic a test can cut, as a network partition would.

``TcpCut(port)`` listens on 127.0.0.1 (its own port) and forwards each connection to
127.0.0.1:``port`` from a background thread. ``cut()`` drops every connection it carries and
refuses new ones until ``heal()``: a process behind it can neither keep nor reopen a session,
which ``pg_terminate_backend`` alone does not model (the client reconnects at once).
"""

from __future__ import annotations

import asyncio
import threading

from sshd import free_port


class TcpCut:
    """Forward 127.0.0.1:``self.port`` → 127.0.0.1:``target``; ``cut()`` / ``heal()``."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self._cut = False
        self._writers: set[asyncio.StreamWriter] = set()
        self.upstream_ports: set[int] = set()  # our side of the live upstream connections
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tcp cut", daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
            self._ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.transport.abort()
            return
        local = up_writer.get_extra_info("sockname")[1]
        self.upstream_ports.add(local)
        self._writers |= {writer, up_writer}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        self._writers -= {writer, up_writer}
        self.upstream_ports.discard(local)

    def cut(self) -> None:
        """Drop every connection now and refuse new ones."""

        def drop() -> None:
            self._cut = True
            for w in list(self._writers):
                w.transport.abort()

        self._loop.call_soon_threadsafe(drop)

    def heal(self) -> None:
        """Let connections through again."""
        self._loop.call_soon_threadsafe(setattr, self, "_cut", False)

    def close(self) -> None:
        """Stop forwarding and end the thread."""
        self.cut()

        def stop() -> None:
            self._server.close()
            self._loop.stop()

        self._loop.call_soon_threadsafe(stop)
        self._thread.join(10)
