"""The dashboard over a real pool: the control loop of `pool serve` (PoolService, the Vast
test double, instances that are Unix users behind a real sshd, provisioned by the real
agent) and the dashboard on one store, in one event loop as `pool serve` runs them. A
throttled model download moves the row's progress bar, and the instance's remote log lines
reach the panel, until the row is ready."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect
from tests.fleet_web.conftest import sign_in
from tests.fleet_web.test_dashboard import DEADLINE, row
from tests.fleet_web.world import POOL, World

from comfyfleet.fleet.config import parse_pool_config
from comfyfleet.fleet.providers.vast import VastProvider
from comfyfleet.fleet.service import PoolService
from comfyfleet.fleet.states import State
from comfyfleet.testing.demo_fixture import build_demo, write_manifest
from comfyfleet.testing.modelserver import Faults, ModelServer, make_safetensors

SVC = Path(__file__).resolve().parents[1] / "fleet_service"
sys.path.insert(0, str(SVC))

from svchelp import PUBLIC_KEY, service_fixtures  # noqa: E402

_svc = service_fixtures("fleet_service_fixtures_web")
# the fleet-service fixtures: an sshd, one Unix user per machine, the double pointing at it
base_dir = _svc.base_dir
sshd = _svc.sshd
machines = _svc.machines
double = _svc.double

pytestmark = pytest.mark.slow


def test_the_page_follows_a_vast_instance_provisioned_over_ssh(
    page: Page, world: World, double: Any, machines: Any, server: ModelServer, base_dir: Path
) -> None:
    demo = build_demo(base_dir / "world", server)
    slow = server.add_file(
        "slow/slow.safetensors", make_safetensors(6 << 20, seed=9), faults=Faults(rate=384 << 10)
    )  # ~8 s over the engine's two connections: the bar is seen moving
    demo.manifest["models"].append({"url": slow, "folder": "loras", "filename": "slow.safetensors"})
    write_manifest(demo.manifest_path, demo.manifest)
    subprocess.run(["chmod", "-R", "a+rX", str(base_dir / "world")], check=True)
    config = parse_pool_config(
        {
            "pool": {"name": POOL, "min_ready": 1, "max_instances": 1,
                     "manifest": str(demo.manifest_path), "instance_root": "workspace",
                     "comfyui_port": "auto", "provision_timeout": "5m", "tick": "0.3s",
                     "backoff": "0.5s"},
            "provider": {"kind": "vast", "api_url": double.url, "ssh_key": "id_ed25519"},
            "store": {"url": "sqlite:////unused.db"},  # the world's store is used
        },
        base_dir=world.tmp,
    )  # fmt: skip
    provider = VastProvider(
        double.url, double.api_key, pool=POOL, offers={}, image="img", disk_gb=16
    )
    service = PoolService(
        config, world.store, provider, ssh_public_key=PUBLIC_KEY, log=lambda _line: None,
        endpoint_for=machines.endpoint_for,
    )  # fmt: skip
    task = asyncio.run_coroutine_threadsafe(service.serve(), world.loop)
    try:
        sign_in(page, world)
        rows = page.locator("[data-instance-id]")
        expect(rows).to_have_count(1, timeout=60_000)
        row_id = rows.first.get_attribute("data-instance-id")
        assert row_id
        panel = page.locator(f'[data-log-for="{row_id}"]')
        expect(panel).to_contain_text("download loras/slow.safetensors", timeout=120_000)
        bar = row(page, row_id).locator("progress")
        seen: set[int] = set()
        for _ in range(600):  # while the slow file downloads: the bar takes several values
            value = bar.get_attribute("value")
            if value and value.isdigit():
                seen.add(int(value))
            if len(seen) >= 3 or row(page, row_id).get_attribute("data-state") == "ready":
                break
            page.wait_for_timeout(100)
        assert len(seen) >= 3, f"the progress bar did not move: {sorted(seen)}"
        expect(row(page, row_id)).to_have_attribute(
            "data-state", State.READY.value, timeout=180_000
        )
        expect(panel).to_contain_text("PROVISIONING COMPLETE", timeout=DEADLINE)
    finally:
        task.cancel()
        try:
            task.result(30)
        except BaseException:  # cancelled: the loop stopped
            pass
        world.run(provider.aclose())
