"""The pool provisions its Vast instances over real SSH (the double's instances are Unix users
behind a real sshd): ready, failed → destroyed → replaced, secrets kept out of everything."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from svchelp import PUBLIC_KEY, wait_for

from comfyfleet.fleet import hostkeys, logstore
from comfyfleet.fleet.config import parse_pool_config
from comfyfleet.fleet.providers.vast import VastProvider
from comfyfleet.fleet.service import PoolService
from comfyfleet.fleet.states import State
from comfyfleet.fleet.store import Store
from comfyfleet.testing.demo_fixture import write_manifest
from comfyfleet.testing.modelserver import make_safetensors

pytestmark = pytest.mark.slow

DONE = b"PROVISIONING COMPLETE"


def pool_config(tmp: Path, double, manifest: Path, **pool):
    data = {
        "pool": {
            "name": "svc",
            "min_ready": 2,
            "max_instances": 2,
            "manifest": str(manifest),
            "instance_root": "workspace",
            "comfyui_port": "auto",
            "provision_timeout": "5m",
            "tick": "0.3s",
            "create_grace": "5s",
            "backoff": "0.5s",
            "backoff_max": "2s",
            **pool,
        },
        "provider": {"kind": "vast", "api_url": double.url, "ssh_key": "id_ed25519"},
        "store": {"url": f"sqlite:///{tmp / 'pool.db'}"},
    }
    return parse_pool_config(data, base_dir=tmp)


async def start(tmp, double, machines, manifest, **pool):
    config = pool_config(tmp, double, manifest, **pool)
    store = await Store.open(config.store_url, pool=config.name)
    provider = VastProvider(
        double.url, double.api_key, pool=config.name, offers={}, image="img", disk_gb=16
    )
    lines: list[str] = []
    service = PoolService(
        config, store, provider, ssh_public_key=PUBLIC_KEY, log=lines.append,
        endpoint_for=machines.endpoint_for,
    )  # fmt: skip
    task = asyncio.create_task(service.serve())
    return config, store, provider, service, task, lines


async def stop(store, provider, task) -> None:
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    await provider.aclose()
    await store.close()


def remote_log(home: Path) -> bytes:
    return (home / "workspace" / ".comfyfleet" / "provision.log").read_bytes()


async def test_pool_fills_to_min_ready_over_ssh_and_keeps_secrets_out(
    tmp_path, double, machines, world, server, monkeypatch
):
    token = "hf_" + os.urandom(16).hex()
    gated = make_safetensors(256 * 1024, seed=4)
    url = server.add_hf_file(
        "private/models", "loras/gated.safetensors", gated, gated=True, granted_tokens=(token,)
    )
    entry = {"url": url, "folder": "loras", "filename": "gated.safetensors"}
    world.manifest["models"].append(entry)
    write_manifest(world.manifest_path, world.manifest)
    monkeypatch.setenv("HF_TOKEN", token)

    config, store, provider, _service, task, lines = await start(
        tmp_path, double, machines, world.manifest_path
    )
    try:

        async def two_ready():
            return [r for r in await store.live() if r.state is State.READY]

        ready = await wait_for(lambda: _at_least(two_ready, 2), 300, "two ready instances")
    finally:
        await stop(store, provider, task)
    store = await Store.open(config.store_url, pool=config.name)
    try:
        rows = await store.rows(include_final=True)
        assert len(rows) == 2 and len(ready) == 2  # no failure, no replacement
        for row in ready:
            machine = machines.made[row.provider_id]
            local = (tmp_path / "logs" / row.id / "r1" / "provision.log").read_bytes()
            assert local == remote_log(machine.home)
            assert local.rstrip(b"\n").rsplit(b"\n", 1)[-1].endswith(DONE)
            link = tmp_path / "logs" / row.id / "provision.log"
            assert link.resolve() == tmp_path / "logs" / row.id / "r1" / "provision.log"
            # the store holds the same bytes; any replica can serve them
            assert await logstore.read_bytes(store, row.id, "r1", "provision.log") == local
            nxt, text = await logstore.read_log(store, row.id, 0)
            assert text.encode() == local and nxt == len(local)
            tail = await logstore.log_tail(store, row.id, 3)
            assert tail[-1].endswith("PROVISIONING COMPLETE")
            port = await logstore.comfyui_port(store, row.id)  # "auto": chosen on the instance
            assert isinstance(port, int) and port != world.port
            progress = await logstore.instance_progress(store, row.id)
            assert progress["phase"] == "done"
            assert progress["bytes_done"] == progress["bytes_total"] > 0
            # pinned at first contact: the sshd's host key
            key = " ".join(machines.sshd.host_key.with_suffix(".pub").read_text().split()[:2])
            assert await hostkeys.pinned_key(store, row.id) == key
            landed = machine.home / "workspace" / "ComfyUI" / "models" / "loras"
            assert (landed / "gated.safetensors").read_bytes() == gated  # the token got there
        secret = token.encode()
        for base in [*(m.home for m in machines.made.values()), tmp_path]:
            for path in base.rglob("*"):
                if path.is_file() and not path.is_symlink():
                    assert secret not in path.read_bytes(), path  # store, logs, events, instance
        assert not any(token in line for line in lines)
        for inst in double.live():
            assert token not in str(inst.env) and token not in str(inst.body)
    finally:
        await store.close()


async def _at_least(fn, n):
    got = await fn()
    return got if len(got) >= n else None


async def test_failed_provision_is_logged_destroyed_and_replaced_with_backoff(
    tmp_path, double, machines, world, server
):
    missing = server.add_file("demo/gone.safetensors", make_safetensors(1024, seed=2))
    world.manifest["models"].append(
        {"url": missing + "-nope", "folder": "loras", "filename": "gone.safetensors"}
    )
    write_manifest(world.manifest_path, world.manifest)
    config, store, provider, _service, task, _lines = await start(
        tmp_path, double, machines, world.manifest_path, min_ready=1, max_instances=1
    )
    try:

        async def two_failed():
            rows = await store.rows(include_final=True)
            failed = [r for r in rows if r.failure_reason]
            return failed if len(failed) >= 2 else None

        failed = await wait_for(two_failed, 240, "two failed provisions")

        async def backoff_grew():  # counted just after the row is marked failed
            return (await store.pool_row()).failures >= 2

        # the backoff grew: ready never reset it
        await wait_for(backoff_grew, 30, "the failure count to reach 2")
    finally:
        await stop(store, provider, task)
    store = await Store.open(config.store_url, pool=config.name)
    try:
        first = failed[0]
        assert "provisioning failed (run r1)" in first.failure_reason
        local = (tmp_path / "logs" / first.id / "r1" / "provision.log").read_bytes()
        assert b"PROVISIONING FAILED" in local
        assert local == remote_log(machines.made[first.provider_id].home)
        history = [t.to_state for t in await store.history(first.id)]
        assert history[-3:] == [State.FAILED, State.DESTROYING, State.DESTROYED] or (
            history[-2:] == [State.FAILED, State.DESTROYING]
        )
        gap = failed[1].created_at - (await store.history(first.id))[-1].at
        assert failed[1].created_at > first.created_at and gap >= -1.0
        assert first.provider_id not in {str(i.id) for i in double.live()}
    finally:
        await store.close()


async def test_reprovision_on_release_wipes_output_and_comes_back_ready(
    tmp_path, double, machines, world
):
    config, store, provider, service, task, _lines = await start(
        tmp_path, double, machines, world.manifest_path,
        min_ready=1, max_instances=1, on_release="reprovision",
    )  # fmt: skip
    try:

        async def one_in(state):
            rows = [r for r in await store.live() if r.state is state]
            return rows[0] if rows else None

        row = await wait_for(lambda: one_in(State.READY), 240, "a ready instance")
        machine = machines.made[row.provider_id]
        comfy = machine.home / "workspace" / "ComfyUI"
        lessee_file = comfy / "output" / "lessee.png"
        for d in ("output", "user"):
            (comfy / d).mkdir(exist_ok=True)
        lessee_file.write_bytes(b"the last user's picture")
        (comfy / "user" / "settings.json").write_text("{}")
        for p in (comfy / "output", comfy / "user", lessee_file, comfy / "user" / "settings.json"):
            os.chown(p, machine.uid, machine.uid)  # the lessee's files, as the lessee made them
        # the lease API's part: leased, then released (the store moves; it calls the flow)
        assert await store.transition(row.id, State.READY, State.LEASED, reason="test lease")
        assert await store.transition(row.id, State.LEASED, State.RELEASING, reason="released")
        await service.release_flow(row.id, "released by the test")

        async def ready_again():
            got = await store.get(row.id)
            run = await logstore.current_run(store, row.id)
            return got.state is State.READY and run.run_id == "r2" and got

        await wait_for(ready_again, 240, "the instance to be ready again after r2")
    finally:
        await stop(store, provider, task)
    assert not lessee_file.exists() and not (comfy / "user" / "settings.json").exists()
    store = await Store.open(config.store_url, pool=config.name)
    try:
        states = [t.to_state for t in await store.history(row.id)]
        assert states[-4:] == [State.LEASED, State.RELEASING, State.PROVISIONING, State.READY]
        assert len(await store.rows(include_final=True)) == 1  # the same machine, not a new one
    finally:
        await store.close()
    r2 = (tmp_path / "logs" / row.id / "r2" / "provision.log").read_bytes()
    assert r2 == remote_log(machine.home) and r2.rstrip(b"\n").endswith(DONE)
    assert (tmp_path / "logs" / row.id / "provision.log").resolve().parent.name == "r2"
