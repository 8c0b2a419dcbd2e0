"""The dead-man's switch end to end: the pool arms it on its Vast instances (the double's
instances are Unix users behind a real sshd), the leader's heartbeats keep them, and once the
control plane stops for good every instance destroys itself with its own key."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

SVC = Path(__file__).resolve().parents[1] / "fleet_service"
sys.path.insert(0, str(SVC))  # svchelp, and the fleet-service fixtures below

from svchelp import service_fixtures, wait_for  # noqa: E402

_svc = service_fixtures("fleet_service_fixtures")
# the fleet-service fixtures (sshd, one Unix user per machine, the double pointing at the sshd)
base_dir = _svc.base_dir  # type: ignore[attr-defined]
sshd = _svc.sshd  # type: ignore[attr-defined]
machines = _svc.machines  # type: ignore[attr-defined]
world = _svc.world  # type: ignore[attr-defined]
double = _svc.double  # type: ignore[attr-defined]

from test_vast_pool import start, stop  # noqa: E402  (fleet_service's pool helpers)

from comfyfleet.fleet.states import FINAL, State  # noqa: E402

pytestmark = pytest.mark.slow
TIMEOUT = 4.0


async def test_heartbeats_keep_instances_and_silence_destroys_them(
    tmp_path, double, machines, world
) -> None:
    config, store, provider, _service, task, lines = await start(
        tmp_path, double, machines, world.manifest_path, min_ready=1, max_instances=1,
        dead_man_switch=f"{TIMEOUT:g}s",
    )  # fmt: skip
    stopped = False
    try:
        deadline = time.monotonic() + 300
        while True:
            ready = [r for r in await store.live() if r.state is State.READY]
            if ready:
                break
            assert time.monotonic() < deadline, "\n".join(lines[-30:])
            await asyncio.sleep(0.3)
        (row,) = ready
        assert any("dead-man's switch armed" in line for line in lines)
        # the leader renews: after 3 timeouts the instance is still there
        await asyncio.sleep(3 * TIMEOUT)
        assert [i.id for i in double.live()] == [int(row.provider_id)], "\n".join(lines[-20:])
        assert not double.requests_to("destroy")
        # the control plane stops for good (the pool's rows stay tracked, nobody renews)
        await stop(store, provider, task)
        stopped = True
        deadline = time.monotonic() + TIMEOUT + 20
        while double.live():
            assert time.monotonic() < deadline, "the instance did not destroy itself"
            await asyncio.sleep(0.2)
        (call,) = double.requests_to("destroy")
        assert call.auth == f"instance:{row.provider_id}"  # its own key, not the operator's
        key = (await _key(config)) or ""
        assert key and not any(key in line for line in lines)
        # a control plane that comes back marks the row gone and forgets its key
        _c, store, provider, _s, task, lines = await start(
            tmp_path, double, machines, world.manifest_path, min_ready=0, max_instances=1,
            dead_man_switch=f"{TIMEOUT:g}s",
        )  # fmt: skip
        stopped = False

        async def gone() -> bool:
            (got,) = await store.rows(include_final=True)
            return got.state in FINAL

        await wait_for(gone, 30, "the row to be marked gone")

        async def forgotten() -> bool:
            return await _key(config) is None

        await wait_for(forgotten, 10, "the instance's key to be forgotten")
    finally:
        if not stopped:
            await stop(store, provider, task)


async def _key(config) -> str | None:
    from comfyfleet.fleet.deadman import instance_key
    from comfyfleet.fleet.store import Store

    store = await Store.open(config.store_url, pool=config.name)
    try:
        (row,) = await store.rows(include_final=True)
        return await instance_key(store, row.id)
    finally:
        await store.close()
