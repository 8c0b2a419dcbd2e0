"""kind = "local" in the service loop: a slot is claimed, provisioned by the local runner, its
log kept in the store and mirrored, ready; the slot is stopped and freed at the end."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from svchelp import wait_for

from comfyfleet.fleet import logstore
from comfyfleet.fleet.config import parse_pool_config
from comfyfleet.fleet.service import PoolService
from comfyfleet.fleet.startup import build_provider
from comfyfleet.fleet.states import State
from comfyfleet.fleet.store import Store
from comfyfleet.testing.demo_fixture import build_demo, free_port
from comfyfleet.testing.repos import build_test_wheels, make_venv

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def venv_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ComfyUI's interpreter with the fake torch (pip never goes online)."""
    wheels = build_test_wheels(tmp_path_factory.mktemp("wheels"))
    return make_venv(
        tmp_path_factory.mktemp("venv") / "venv", wheels=wheels, packages=("torch==1.0.0",)
    )


async def test_a_local_slot_is_provisioned_by_the_loop_to_ready(tmp_path, server, venv_python):
    world = build_demo(tmp_path / "world", server, python=str(venv_python))
    cfg = parse_pool_config(
        {
            "pool": {"name": "loc", "min_ready": 1, "max_instances": 1,
                     "manifest": str(world.manifest_path), "tick": "0.3s",
                     "provision_timeout": "5m", "backoff": "0.5s", "backoff_max": "1s"},
            "provider": {"kind": "local", "base_dir": "base", "ports": [free_port()]},
        },
        base_dir=tmp_path,
    )  # fmt: skip
    store = await Store.open(cfg.store_url, pool=cfg.name)
    provider = build_provider(cfg)
    service = PoolService(cfg, store, provider, log=lambda _line: None)
    task = asyncio.create_task(service.serve())
    try:

        async def ready():
            rows = [r for r in await store.live() if r.state is State.READY]
            return rows[0] if rows else None

        row = await wait_for(ready, 180, "the local slot to be ready")
        slot = provider.slot(row.provider_id)
        remote = (slot.root / ".comfyfleet" / "provision.log").read_bytes()
        local = (tmp_path / "logs" / row.id / "r1" / "provision.log").read_bytes()
        assert local == remote and local.rstrip(b"\n").endswith(b"PROVISIONING COMPLETE")
        assert await logstore.read_bytes(store, row.id, "r1", "provision.log") == remote
        assert await logstore.comfyui_port(store, row.id) == cfg.provider.ports[0]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        for r in await store.live():
            if r.provider_id is not None:
                await provider.destroy(r.provider_id, label=r.label)
        await provider.aclose()
        await store.close()
