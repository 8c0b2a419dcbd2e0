"""`pool lease/renew/release` as a user runs them (subprocesses) against a real API server,
and `pool serve` starting the API (refused without COMFYFLEET_API_TOKEN: exit 2)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from comfyfleet.fleet import leases
from comfyfleet.fleet.states import State

from .conftest import TOKEN, make_ready

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fleet"))

from poolrun import PoolRun
from vastdouble import VastDouble

CLI = [sys.executable, "-c", "from comfyfleet.cli import main; main()"]
PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHc0bWZsZWV0dGVzdGtleWZvcnRoZWRvdWJsZQ test"


def _config(tmp: Path, listen: str) -> Path:
    (tmp / "manifest.toml").write_text(
        'version = 1\n[comfyui]\nrepo = "https://example.invalid/ComfyUI.git"\nref = "v1"\n'
    )
    (tmp / "id_ed25519.pub").write_text(PUBLIC_KEY + "\n")
    path = tmp / "POOL.toml"
    path.write_text(
        '[pool]\nname = "sdxl"\nmanifest = "manifest.toml"\nlease_ttl = "10m"\n'
        '[provider]\nkind = "vast"\nssh_key = "id_ed25519"\n'
        f'[store]\nurl = "sqlite:///{tmp / "unused.db"}"\n[api]\nlisten = "{listen}"\n'
    )
    return path


async def _cli(*args: str, token: str | None = TOKEN) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k != "COMFYFLEET_API_TOKEN"}
    if token is not None:
        env["COMFYFLEET_API_TOKEN"] = token
    proc = await asyncio.create_subprocess_exec(
        *CLI, "pool", *args, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def test_lease_renew_release_from_the_command_line(start_api, sqlite_url, tmp_path):
    api = await start_api(sqlite_url, comfyui_port=lambda row: 8188)
    [row] = await make_ready(api.store, 1, ssh=("198.51.100.9", 41000, "root"), ctx=api.ctx)
    config = _config(tmp_path, api.url.removeprefix("http://"))

    code, out, err = await _cli("lease", "--config", str(config), "--wait", "0", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["instance_id"] == row.id and doc["ssh"]["port"] == 41000
    key_file = Path(doc["key_file"])
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert f"-i {key_file} " in doc["tunnel"] and doc["tunnel"].startswith("ssh -N -L 8188:")

    code, out, err = await _cli("renew", "--config", str(config), doc["lease_id"])
    assert code == 0 and "renewed" in out, err
    code, out, err = await _cli("release", "--config", str(config), doc["lease_id"])
    assert code == 0 and "released" in out, err
    lease, _ = await leases.get(api.store, doc["lease_id"])
    assert lease.state == "released"
    assert (await api.store.get(row.id)).state is State.RELEASING

    # nothing ready: exit 1 with the queue position; a wrong token: exit 2; gone: exit 1
    code, _, err = await _cli("lease", "--config", str(config), "--wait", "0")
    assert code == 1 and "queue position 1" in err and "Traceback" not in err
    code, _, err = await _cli("lease", "--config", str(config), token="wrong")
    assert code == 2 and "COMFYFLEET_API_TOKEN" in err
    code, _, err = await _cli("release", "--config", str(config), doc["lease_id"])
    assert code == 1 and "released" in err


async def test_lease_hold_renews_until_interrupted_then_releases(start_api, sqlite_url, tmp_path):
    api = await start_api(sqlite_url, lease_ttl=3.0)
    [row] = await make_ready(api.store, 1, ctx=api.ctx)
    config = _config(tmp_path, api.url.removeprefix("http://"))
    env = {**os.environ, "COMFYFLEET_API_TOKEN": TOKEN}
    proc = await asyncio.create_subprocess_exec(
        *CLI, "pool", "lease", "--config", str(config), "--hold", env=env,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while (await api.store.get(row.id)).state is not State.LEASED:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        [held] = await leases.active(api.store)
        first_expiry = held.expires_at
        while (await leases.active(api.store))[0].expires_at == first_expiry:  # renewed
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
    assert proc.returncode == 130, err.decode()
    lease, _ = await leases.get(api.store, held.id)
    assert lease.state == "released"


@pytest.fixture
def double():
    d = VastDouble()
    d.add_offers(4)
    d.start_in_thread()
    yield d
    d.stop_thread()


def test_serve_refuses_to_start_without_the_token_and_serves_the_api_with_it(
    tmp_path: Path, double
):
    from sshd import free_port

    run = PoolRun(tmp_path, double, f"sqlite:///{tmp_path / 'pool.db'}", min_ready=0)
    env = {k: v for k, v in os.environ.items() if k != "COMFYFLEET_API_TOKEN"}
    env["VAST_API_KEY"] = double.api_key
    out = subprocess.run(
        [*CLI, "pool", "serve", "--config", str(run.config)],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2 and "COMFYFLEET_API_TOKEN" in out.stderr
    assert "Traceback" not in out.stderr and not double.requests_to("create")
    out = subprocess.run(
        [*CLI, "pool", "serve", "--config", str(run.config), "--listen", "nonsense"],
        env={**env, "COMFYFLEET_API_TOKEN": TOKEN}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2 and "HOST:PORT" in out.stderr

    port = free_port()
    proc = subprocess.Popen(
        [*CLI, "pool", "serve", "--config", str(run.config), "--listen", f"127.0.0.1:{port}"],
        env={**env, "COMFYFLEET_API_TOKEN": TOKEN},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:

        async def probe() -> tuple[int, dict, int]:
            async with aiohttp.ClientSession() as http:
                for _ in range(300):
                    try:
                        async with http.get(f"http://127.0.0.1:{port}/healthz") as r:
                            health = r.status
                            break
                    except aiohttp.ClientError:
                        await asyncio.sleep(0.1)
                else:
                    raise AssertionError("the API never answered")
                auth = {"Authorization": f"Bearer {TOKEN}"}
                async with http.get(f"http://127.0.0.1:{port}/v1/instances", headers=auth) as r:
                    doc = await r.json()
                async with http.get(f"http://127.0.0.1:{port}/v1/instances") as r:
                    return health, doc, r.status

        health, doc, anonymous = asyncio.run(probe())
        assert health == 200 and doc == {"instances": []} and anonymous == 401
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 130
    finally:
        if proc.poll() is None:
            proc.kill()


async def test_provider_errors_by_kind_and_orphans_destroyed_are_counted(tmp_path, double):
    from comfyfleet.fleet.config import load_pool_config
    from comfyfleet.fleet.errors import ProviderError
    from comfyfleet.fleet.metrics import FleetMetrics, meter_provider
    from comfyfleet.fleet.providers.vast import VastProvider as Vast
    from comfyfleet.fleet.startup import build_provider
    from comfyfleet.fleet.store import Store

    run = PoolRun(tmp_path, double, f"sqlite:///{tmp_path / 'pool.db'}", min_ready=0)
    os.environ["VAST_API_KEY"] = double.api_key
    try:
        cfg = load_pool_config(run.config)
        provider = build_provider(cfg)
    finally:
        del os.environ["VAST_API_KEY"]
    store = await Store.open(cfg.store_url, pool=cfg.name)
    metrics = FleetMetrics()
    try:
        assert meter_provider(provider, store, metrics) is provider
        assert isinstance(provider, Vast)  # still what it was
        orphan = double.add_foreign(label="comfyfleet-sdxl-0123456789ab",
                                    env={"COMFYFLEET_POOL": "sdxl"})  # fmt: skip
        await provider.destroy(str(orphan.id), label=orphan.label)
        assert metrics.orphans._value.get() == 1
        double.faults.next("*", "html", count=20)
        try:
            await provider.list_instances()
        except ProviderError as exc:
            kind = type(exc).__name__
        else:
            raise AssertionError("the html answer was accepted")
        assert metrics.provider_errors.labels(kind=kind)._value.get() >= 1
    finally:
        double.faults.clear()
        await provider.aclose()
        await store.close()
