"""Restart safety: SIGKILL of `pool serve` mid-provisioning, then a restart, on an ssh pool.

The new serve adopts the instance, finds the run it recorded, and follows the provision that
is still running (the agent's start lock refuses a second start) from the store's checkpoint.
"""

from __future__ import annotations

import signal

import pytest
from svchelp import serve, wait_for, write_config

from comfyfleet.fleet import logstore
from comfyfleet.fleet.states import State
from comfyfleet.fleet.store import Store
from comfyfleet.testing.demo_fixture import write_manifest
from comfyfleet.testing.modelserver import Faults, make_safetensors

pytestmark = pytest.mark.slow

DONE = b"PROVISIONING COMPLETE"


async def rows_of(url: str):
    store = await Store.open(url, pool="svc")
    try:
        return await store.rows(include_final=True), store
    except BaseException:
        await store.close()
        raise


async def test_sigkill_mid_provisioning_then_restart_adopts_the_run(
    tmp_path, sshd, machines, world, server
):
    slow = make_safetensors(3 * 1024 * 1024, seed=7)
    url = server.add_file("slow/slow.safetensors", slow, faults=Faults(rate=192 * 1024))
    entry = {"url": url, "folder": "loras", "filename": "slow.safetensors"}
    world.manifest["models"].append(entry)
    write_manifest(world.manifest_path, world.manifest)
    machine = machines.make("host-1")
    config = write_config(tmp_path, sshd, [machine], world.manifest_path)
    log = tmp_path / "serve.log"
    url_db = f"sqlite:///{tmp_path / 'pool.db'}"
    remote = machine.home / "workspace" / ".comfyfleet" / "provision.log"

    proc = serve(config, log, server)
    try:
        # mid-provisioning: the slow model is downloading and lines are in the store
        await wait_for(
            lambda: remote.exists() and b"slow.safetensors" in remote.read_bytes(),
            180, "the slow download to start",
        )  # fmt: skip
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        rows, store = await rows_of(url_db)
        try:
            assert [r.state for r in rows] == [State.PROVISIONING]
            row = rows[0]
            stored_before = await logstore.read_bytes(store, row.id, "r1", "provision.log")
        finally:
            await store.close()
        assert DONE not in remote.read_bytes()  # still provisioning on the host

        proc = serve(config, log, server)

        async def ready():
            got, st = await rows_of(url_db)
            await st.close()
            return got if got and got[0].state is State.READY else None

        try:
            rows = await wait_for(ready, 240, "the adopted instance to become ready")
        except AssertionError:
            raise AssertionError(log.read_text(errors="replace")[-3000:]) from None
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)
    local = (tmp_path / "logs" / row.id / "r1" / "provision.log").read_bytes()
    assert local == remote.read_bytes()  # nothing lost, nothing twice
    assert local.startswith(stored_before) and local.rstrip(b"\n").endswith(DONE)
    # one provision: one run directory, no rotated log from a second start, one run row
    runs = machine.home / ".comfyfleet-agent" / "runs"
    assert [p.name for p in runs.iterdir()] == [row.id]
    assert [p.name for p in (runs / row.id).iterdir()] == ["r1"]
    assert not (remote.parent / "provision.log.1").exists()
    store = await Store.open(url_db, pool="svc")
    try:
        run = await logstore.current_run(store, row.id)
        assert (run.run_id, run.outcome) == ("r1", "complete")
        assert await logstore.read_bytes(store, row.id, "r1", "provision.log") == local
    finally:
        await store.close()
    assert "Traceback" not in log.read_text(errors="replace")
