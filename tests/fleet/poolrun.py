"""Run ``comfyfleet pool …`` as a subprocess against the Vast double (which lives in the test
process, so its state and billing ledger survive a SIGKILL of the control plane)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vastdouble import VastDouble

from comfyfleet.fleet.states import FINAL, LIVE, State
from comfyfleet.fleet.store import InstanceRow, Store

POOL = "sdxl"
#: a syntactically valid OpenSSH public key (never used to log in: the double has no sshd)
PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHc0bWZsZWV0dGVzdGtleWZvcnRoZWRvdWJsZQ test"
CLI = [sys.executable, "-c", "from comfyfleet.cli import main; main()"]


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.1) -> Any:
    """Poll ``predicate`` until it is truthy (returning it) or fail after ``timeout`` s."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


class PoolRun:
    """A pool config in ``tmp`` pointing at ``double``, and its ``pool serve`` process."""

    def __init__(
        self,
        tmp: Path,
        double: VastDouble,
        store_url: str,
        *,
        min_ready: int = 2,
        max_instances: int = 3,
        provision_timeout: str = "1h",
        extra_pool: str = "",
        offers: str = "",
    ) -> None:
        self.tmp = tmp
        self.double = double
        self.store_url = store_url
        self.min_ready = min_ready
        self.max_instances = max_instances
        self.config = tmp / "POOL.toml"
        self.log = tmp / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None
        (tmp / "manifest.toml").write_text(
            'version = 1\n[comfyui]\nrepo = "https://example.invalid/ComfyUI.git"\nref = "v1"\n'
        )
        # (wave2: fleet-provisioning) a real key pair: serve now logs in to provision (the
        # double's ssh hosts do not resolve, so its instances stay in provisioning)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / "id_ed25519")],
            check=True, capture_output=True,
        )  # fmt: skip
        self.write(provision_timeout=provision_timeout, extra_pool=extra_pool, offers=offers)

    def write(
        self, *, provision_timeout: str = "1h", extra_pool: str = "", offers: str = ""
    ) -> None:
        """(Re)write POOL.toml; a restarted serve reads the new one."""
        self.config.write_text(
            textwrap.dedent(
                f"""
                [pool]
                name = "{POOL}"
                min_ready = {self.min_ready}
                max_instances = {self.max_instances}
                max_hourly_spend = 50.0
                provision_timeout = "{provision_timeout}"
                manifest = "manifest.toml"
                tick = "0.2s"
                create_grace = "3s"
                backoff = "0.2s"
                backoff_max = "1s"
                """
            )
            + extra_pool
            + textwrap.dedent(
                f"""
                [provider]
                kind = "vast"
                api_url = "{self.double.url}"
                ssh_key = "id_ed25519"
                [provider.offers]
                """
            )
            + offers
            + f'\n[store]\nurl = "{self.store_url}"\n'
            # (wave2: fleet-api) the lease API on a free port: serves never collide
            + '[api]\nlisten = "127.0.0.1:0"\n'
        )

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in {"HF_TOKEN", "CIVITAI_TOKEN"}}
        env["VAST_API_KEY"] = self.double.api_key
        env.update(extra)
        return env

    # --- pool serve ----------------------------------------------------------------------

    def start(self, **env: str) -> subprocess.Popen[bytes]:
        """Start ``pool serve`` (its stderr appends to serve.log)."""
        assert self.proc is None or self.proc.poll() is not None
        self._log_mark = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as log:
            log.write(f"--- start {time.strftime('%H:%M:%S')}\n".encode())
            self.proc = subprocess.Popen(
                [*CLI, "pool", "serve", "--config", str(self.config)],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=self.env(**env),
            )
        return self.proc

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send ``sig``; return the exit code (fails if it takes more than 10 s)."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=10)

    def cli(self, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
        """Run another ``pool`` command to completion."""
        return subprocess.run(
            [*CLI, "pool", *args, "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(**env),
            stdin=subprocess.DEVNULL,
        )

    def serve_log(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def serving(self) -> bool:
        """The current serve passed its start-up checks and runs its loop."""
        with self.log.open("rb") as f:
            f.seek(self._log_mark)
            return b"serving (tick" in f.read()

    def wait_serving(self, timeout: float = 30) -> None:
        """Wait until the current serve runs its loop, plus two more listings (ticks)."""
        try:
            wait_until(self.serving, timeout, "pool serve to start serving")
        except AssertionError:
            raise AssertionError(f"serve did not start:\n{self.serve_log()[-3000:]}") from None
        seen = len(self.double.requests_to("list"))
        wait_until(lambda: len(self.double.requests_to("list")) >= seen + 2, 10, "two ticks")

    # --- the store, read from the test process ------------------------------------------

    def rows(self, *, include_final: bool = True) -> list[InstanceRow]:
        async def read() -> list[InstanceRow]:
            store = await Store.open(self.store_url, pool=POOL)
            try:
                return await store.rows(include_final=include_final)
            finally:
                await store.close()

        return asyncio.run(read())

    # --- the checks every crash test ends with --------------------------------------------

    def ours_alive(self) -> list[Any]:
        return self.double.live()  # API-created only; foreign ones are excluded

    def settled(self) -> bool:
        """min_ready instances up (booting/provisioning) and every one tracked live."""
        rows = self.rows()
        live = {r.label: r for r in rows if r.state in LIVE}
        alive = self.ours_alive()
        up = [r for r in live.values() if r.state in (State.BOOTING, State.PROVISIONING)]
        in_doubt = [r for r in live.values() if r.state not in (State.BOOTING, State.PROVISIONING)]
        return (
            len(up) >= self.min_ready
            and not in_doubt
            and all(i.label in live for i in alive)
            and len(alive) == len(up)
        )

    def assert_consistent(self, foreign: list[Any]) -> None:
        """The three promises, plus foreign instances untouched."""
        rows = self.rows()
        labels = {r.label for r in rows}
        live_labels = {r.label for r in rows if r.state in LIVE}
        with self.double._lock:
            ours = [i for i in self.double.instances.values() if not i.foreign]
        # intent before action: no instance was ever created without its row written first
        assert all(i.label in labels for i in ours), "an instance exists that no row announced"
        # nothing alive that the store does not track as live
        for inst in self.ours_alive():
            assert inst.label in live_labels, f"{inst.id} ({inst.label}) alive but untracked"
        # every row the store calls final has no instance billing
        final = {r.provider_id for r in rows if r.state in FINAL and r.provider_id}
        assert not final & {str(i.id) for i in self.ours_alive()}
        assert self.double.max_alive <= self.max_instances, self.double.max_alive
        destroyed_ids = {
            r.path.rstrip("/").rsplit("/", 1)[-1] for r in self.double.requests_to("destroy")
        }
        for f in foreign:
            assert f.alive, f"foreign instance {f.id} ({f.label}) was destroyed"
            assert str(f.id) not in destroyed_ids, f"destroy was sent for foreign {f.id}"


def add_foreigners(double: VastDouble) -> list[Any]:
    """Instances that are not pool sdxl's: they must survive everything the pool does."""
    return [
        # another pool whose name shares the prefix
        double.add_foreign(
            label="comfyfleet-sdxl-xl-0123456789ab", env={"COMFYFLEET_POOL": "sdxl-xl"}
        ),
        # our exact label shape, but no env marker
        double.add_foreign(label="comfyfleet-sdxl-0123456789ab", env={}),
        # the marker, but not our label shape
        double.add_foreign(label="comfyfleet-sdxl-manual", env={"COMFYFLEET_POOL": "sdxl"}),
        # unlabelled
        double.add_foreign(label=None),
    ]
