"""A real lease API + dashboard (uvicorn on a free loopback port) over a real SQLite store,
run in a thread of its own, with helpers that write what the fleet writes: instance rows
through their legal transitions, provisioning logs and progress through the log store's
sinks (what the follower does)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import uvicorn

from comfyfleet.fleet.api import ApiContext, bind, create_app
from comfyfleet.fleet.ownership import new_label
from comfyfleet.fleet.states import State
from comfyfleet.fleet.store import InstanceRow, Store

if TYPE_CHECKING:
    from comfyfleet.fleet import logstore

T = TypeVar("T")
POOL = "web"
S = State
PATH = {
    S.REQUESTED: [],
    S.CREATING: [S.CREATING],
    S.BOOTING: [S.CREATING, S.BOOTING],
    S.PROVISIONING: [S.CREATING, S.BOOTING, S.PROVISIONING],
    S.READY: [S.CREATING, S.BOOTING, S.PROVISIONING, S.READY],
}


class NoKeys:
    """Local instances need no SSH key (the API never calls these for them)."""

    async def add(self, row: InstanceRow, line: str) -> None:
        raise AssertionError("no SSH key for a local instance")

    async def remove(self, row: InstanceRow, line: str) -> None:
        raise AssertionError("no SSH key for a local instance")


class Follower:
    """Writes one instance's provisioning log into the store as the log follower does."""

    def __init__(self, sinks: logstore.StoreRunSinks) -> None:
        self.sinks = sinks
        self.offset = 0

    async def line(self, text: str) -> None:
        """Append one line and commit it with its checkpoint."""
        data = (text + "\n").encode()
        self.offset += len(data)
        sink = self.sinks.sink("provision.log")
        sink.append(data, {"offset": self.offset})
        await sink.drain()

    async def progress(self, **doc: Any) -> None:
        """Store the run's progress (phase, bytes_done, bytes_total)."""
        self.sinks.set_progress(doc)
        sink = self.sinks.sink("events.jsonl")
        sink.append(b"", {"offset": 0})
        await sink.drain()


class World:
    """The served app and its store, driven from the test's thread."""

    def __init__(self, tmp: Path, token: str | None = None) -> None:
        self.tmp = tmp
        self.token = token or secrets.token_hex(16)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.store: Store = self.run(Store.open(f"sqlite:///{tmp}/web-pool.db", pool=POOL))
        self.ctx = ApiContext(
            store=self.store,
            operator_token=self.token,
            lease_ttl=600,
            keys=NoKeys(),
            local_url=lambda row: f"http://127.0.0.1:1/{row.id}",
            destroy=self._destroy,
        )
        self.app = create_app(self.ctx)
        self.sock = self.run(self._bind())
        host, port = self.sock.getsockname()[:2]
        self.url = f"http://{host}:{port}/"
        self.server = uvicorn.Server(
            uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="on")
        )
        self._served: Future[None] = asyncio.run_coroutine_threadsafe(
            self.server.serve(sockets=[self.sock]), self.loop
        )
        self.run(self._started())

    async def _bind(self) -> Any:
        return bind("127.0.0.1:0")

    async def _started(self) -> None:
        while not self.server.started:
            await asyncio.sleep(0.02)

    def run(self, coro: Awaitable[T]) -> T:
        """Run ``coro`` on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)  # type: ignore[arg-type]

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kw: Any) -> T:
        """``run(fn(*args, **kw))``."""
        return self.run(fn(*args, **kw))

    async def _destroy(self, row_id: str, reason: str) -> None:
        row = await self.store.get(row_id)
        assert row is not None
        await self.store.transition(row_id, row.state, S.DESTROYING, reason=reason)

    async def add(self, state: State, *, slot: int = 0, dph: float = 0.25) -> str:
        """A local instance row moved to ``state`` through legal transitions."""
        row_id = secrets.token_hex(6)
        await self.store.add_intent(
            row_id=row_id, label=new_label(POOL), provider_kind="local", dph=dph
        )
        old = S.REQUESTED
        for step in PATH[state]:
            fields: dict[str, Any] = {}
            if step is S.BOOTING:
                fields = {"provider_id": str(slot), "gpu_name": f"GPU {slot}"}
            assert await self.store.transition(row_id, old, step, reason="test", **fields)
            old = step
        return row_id

    async def follower(self, row_id: str) -> Follower:
        """A follower of a new provisioning run of ``row_id``."""
        from comfyfleet.fleet import logstore

        run = await logstore.begin_run(self.store, row_id)
        sinks = await logstore.StoreRunSinks.open(self.store, row_id, run.run_id, self.tmp / "logs")
        return Follower(sinks)

    async def state(self, row_id: str) -> str:
        """The row's state in the store."""
        row = await self.store.get(row_id)
        assert row is not None
        return row.state.value

    def close(self) -> None:
        """Stop the server, close the store and the loop."""
        self.loop.call_soon_threadsafe(self.app.state.dashboard.hub.end_streams)
        self.server.should_exit = True
        with contextlib.suppress(Exception):
            self._served.result(15)
        self.run(self.app.state.dashboard.hub.aclose())
        self.run(self.store.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
