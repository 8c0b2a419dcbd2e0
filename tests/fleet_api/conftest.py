"""Fixtures: a real uvicorn server of the lease API on a free port over a real store
(SQLite and a throwaway PostgreSQL), and ready rows made through the store's transitions."""

from __future__ import annotations

import asyncio
import secrets
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/pg.py, tests/sshd.py

from comfyfleet.fleet import leases
from comfyfleet.fleet.api import ApiContext, bind, create_app, serve_api
from comfyfleet.fleet.keys import attach_standby_key, generate_lease_key
from comfyfleet.fleet.states import State
from comfyfleet.fleet.store import InstanceRow, Store

TOKEN = "operator-" + secrets.token_hex(16)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite store URL (tests that do not depend on the backend)."""
    return f"sqlite:///{tmp_path / 'pool.db'}"


@dataclass
class FileKeys:
    """Keys into a local authorized_keys file per instance (the SSH path has its own tests
    against real sshd; here the file shows what was added and removed)."""

    root: Path
    added: list[str] = field(default_factory=list)

    def path(self, row: InstanceRow) -> Path:
        return self.root / row.id / "authorized_keys"

    async def add(self, row: InstanceRow, line: str) -> None:
        p = self.path(row)
        p.parent.mkdir(parents=True, exist_ok=True)
        with p.open("a") as f:
            f.write(line + "\n")
        self.added.append(line)

    async def remove(self, row: InstanceRow, line: str) -> None:
        p = self.path(row)
        kept = [x for x in p.read_text().splitlines() if x != line]
        p.write_text("".join(x + "\n" for x in kept))


@dataclass
class Api:
    """A running API: its URL, context, a client session and the operator's headers."""

    url: str
    ctx: ApiContext
    http: aiohttp.ClientSession
    released: list[tuple[str, str]]
    destroyed: list[tuple[str, str]]

    @property
    def store(self) -> Store:
        return self.ctx.store

    def auth(self, token: str = TOKEN) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    async def lease(self, wait_s: float = 0, **body: Any) -> tuple[int, dict[str, Any]]:
        async with self.http.post(
            f"{self.url}/v1/leases", json={"wait_s": wait_s, **body}, headers=self.auth()
        ) as r:
            return r.status, await r.json()


async def make_ready(
    store: Store,
    n: int,
    *,
    ssh: tuple[str, int, str] = ("203.0.113.7", 41022, "root"),
    key: bool = True,
    kind: str = "vast",
    ctx: ApiContext | None = None,
) -> list[InstanceRow]:
    """``n`` rows moved to ready through the legal transitions, with a standby key (attached
    through ``ctx``'s key installer when given, else recorded in the store only)."""
    rows = []
    for _ in range(n):
        row = await store.add_intent(
            row_id=secrets.token_hex(6),
            label=f"comfyfleet-{store.pool}-{secrets.token_hex(6)}",
            provider_kind=kind,
        )
        path = [State.CREATING, State.BOOTING, State.PROVISIONING, State.READY]
        old = State.REQUESTED
        for new in path:
            fields: dict[str, Any] = {}
            if new is State.BOOTING:
                fields = {"provider_id": secrets.token_hex(4), "dph": 0.5, "gpu_name": "RTX 4090"}
            if new is State.PROVISIONING:
                fields = {"ssh_host": ssh[0], "ssh_port": ssh[1], "ssh_user": ssh[2]}
            assert await store.transition(row.id, old, new, reason="test", **fields)
            old = new
        if key and ctx is not None:
            got = await store.get(row.id)
            assert got is not None
            await attach_standby_key(ctx, got)
        elif key:
            await leases.record_standby_key(
                store, row.id, generate_lease_key(store.pool, row.id), now=store._clock()
            )
        got = await store.get(row.id)
        assert got is not None
        rows.append(got)
    return rows


@pytest.fixture
async def start_api(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """``await start_api(store_url, **ctx fields)`` → :class:`Api` on a real uvicorn."""
    running: list[tuple[asyncio.Task[None], Api]] = []

    async def start(url: str, **kw: Any) -> Api:
        store = await Store.open(url, pool=kw.pop("pool", "sdxl"))
        released: list[tuple[str, str]] = []
        destroyed: list[tuple[str, str]] = []

        async def on_release(row_id: str, reason: str) -> None:
            released.append((row_id, reason))

        async def destroy(row_id: str, reason: str) -> None:
            destroyed.append((row_id, reason))

        fields: dict[str, Any] = {
            "operator_token": TOKEN,
            "lease_ttl": 600.0,
            "keys": FileKeys(tmp_path / "keys"),
            "on_release": on_release,
            "destroy": destroy,
            "sweep_interval": 0.05,
        }
        fields.update(kw)
        ctx = ApiContext(store=store, **fields)
        sock = bind("127.0.0.1:0")
        host, port = sock.getsockname()[:2]
        task = asyncio.get_running_loop().create_task(serve_api(ctx, sock, create_app(ctx)))
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=300))
        api = Api(f"http://{host}:{port}", ctx, http, released, destroyed)
        running.append((task, api))
        for _ in range(200):  # until it answers
            try:
                async with http.get(f"{api.url}/healthz") as r:
                    if r.status == 200:
                        break
            except aiohttp.ClientError:
                await asyncio.sleep(0.02)
        return api

    yield start
    for task, api in running:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        await api.http.close()
        await api.store.close()
