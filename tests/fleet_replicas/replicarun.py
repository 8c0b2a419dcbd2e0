"""`pool serve` replicas as subprocesses (each its own config dir and --listen port, one shared
store), and reading who leads from the store."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fleet"))  # poolrun, vastdouble

from poolrun import CLI, POOL, PoolRun, wait_until
from vastdouble import VastDouble

from comfyfleet.fleet.leader import LeaderRow, read_leader
from comfyfleet.fleet.store import Store

API_TOKEN = "replica-tests-operator-token-0123456789abcdef"
TTL = 2.0  # leader_ttl of the test pools: a handover takes about this long
#: the bound a handover must meet: the lease runs out, a standby polls, takes it
HANDOVER_BOUND = TTL + 13.0  # the max (15 s); generous on a loaded machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Replica(PoolRun):
    """A `pool serve` on its own --listen address, sharing the store with the others."""

    def __init__(self, tmp: Path, double: VastDouble, store_url: str, **kw: Any) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        kw.setdefault("extra_pool", f'leader_ttl = "{TTL:g}s"\n')
        super().__init__(tmp, double, store_url, **kw)
        self.listen = f"127.0.0.1:{free_port()}"

    def env(self, **extra: str) -> dict[str, str]:
        # the lease API's operator token (every replica serves the API)
        return super().env(**{"COMFYFLEET_API_TOKEN": API_TOKEN, **extra})

    def start(self, **env: str) -> subprocess.Popen[bytes]:
        assert self.proc is None or self.proc.poll() is not None
        self._log_mark = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as log:
            log.write(f"--- start {time.strftime('%H:%M:%S')}\n".encode())
            self.proc = subprocess.Popen(
                [*CLI, "pool", "serve", "--config", str(self.config), "--listen", self.listen],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=self.env(**env),
            )
        return self.proc

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_started(self, timeout: float = 40) -> None:
        try:
            wait_until(self.serving, timeout, "pool serve to start serving")
        except AssertionError:
            raise AssertionError(f"serve did not start:\n{self.serve_log()[-3000:]}") from None


def leader_row(store_url: str) -> LeaderRow | None:
    async def read() -> LeaderRow | None:
        store = await Store.open(store_url, pool=POOL)
        try:
            return await read_leader(store.engine, POOL)
        finally:
            await store.close()

    return asyncio.run(read())


def current_leader(store_url: str) -> LeaderRow | None:
    """The leader row while someone holds an unexpired lease, else None."""
    row = leader_row(store_url)
    if row is None or row.holder is None or row.expires_at < row.now:
        return None
    return row


def leading_replica(replicas: list[Replica], store_url: str) -> tuple[Replica, LeaderRow]:
    """Which of ``replicas`` leads now (by the pid in its replica id)."""
    row = wait_until(lambda: current_leader(store_url), 40, "a leader")
    for r in replicas:
        if r.alive() and f"-{r.proc.pid}-" in (row.holder or ""):
            return r, row
    raise AssertionError(f"the leader {row.holder} is none of the running replicas")
