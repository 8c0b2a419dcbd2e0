"""An ssh pool of two hosts under a real `pool serve`: both provision in parallel over SSH,
each ComfyUI on a port of its own ("auto"), and the lease API hands them out with a tunnel
that names that port and reaches ComfyUI through the lease's key."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess

import aiohttp
import pytest
from svchelp import API_TOKEN, serve, wait_for, write_config

from comfyfleet.fleet import logstore
from comfyfleet.fleet.states import State
from comfyfleet.fleet.store import Store
from sshd import free_port, get_through_tunnel, logs_in, ssh_opts

pytestmark = pytest.mark.slow

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


async def test_two_ssh_hosts_fill_lease_with_their_own_ports_and_come_back_wiped(
    tmp_path, sshd, machines, world, server
):
    hosts = [machines.make("host-a"), machines.make("host-b")]
    api = f"http://127.0.0.1:{free_port()}"
    config = write_config(
        tmp_path, sshd, hosts, world.manifest_path, listen=api.removeprefix("http://"),
        min_ready=2, lease_ttl="10m",
    )  # fmt: skip
    log = tmp_path / "serve.log"
    store = await Store.open(f"sqlite:///{tmp_path / 'pool.db'}", pool="svc")
    proc = serve(config, log, server)

    async def ready_rows():
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        rows = [r for r in await store.live() if r.state is State.READY]
        return rows if len(rows) == 2 else None

    try:
        try:
            rows = await wait_for(ready_rows, 300, "both hosts to become ready", step=0.5)
        except AssertionError:
            raise AssertionError(log.read_text(errors="replace")[-3000:]) from None
        ports = {r.id: await logstore.comfyui_port(store, r.id) for r in rows}
        assert None not in ports.values() and len(set(ports.values())) == 2  # one each
        user_of = {r.id: r.ssh_user for r in rows}
        login_of = {r.id: f"{r.ssh_user}@{r.ssh_host}" for r in rows}
        assert sorted(user_of.values()) == sorted(m.user for m in hosts)
        assert sorted(r.ssh_host for r in rows) == ["127.0.0.1", "127.0.0.2"]

        async with aiohttp.ClientSession(headers=AUTH) as http:
            docs = []
            for _ in range(2):
                async with http.post(f"{api}/v1/leases", json={"wait_s": 5}) as r:
                    assert r.status == 201, await r.text()
                    docs.append(await r.json())
            async with http.post(f"{api}/v1/leases", json={"wait_s": 0.5}) as r:
                assert r.status == 503 and (await r.json())["queue_position"] == 1
        assert {d["instance_id"] for d in docs} == set(ports)  # never one instance twice

        doc = docs[0]
        port = ports[doc["instance_id"]]
        tunnel = doc["tunnel"].split()
        assert tunnel[:4] == ["ssh", "-N", "-L", f"{port}:127.0.0.1:{port}"]
        assert tunnel[-1] == login_of[doc["instance_id"]]
        key = tmp_path / "lease.key"
        key.write_text(doc["private_key"])
        key.chmod(0o600)
        local = free_port()
        forward = await asyncio.create_subprocess_exec(
            "ssh", "-N", "-L", f"{local}:127.0.0.1:{port}", *ssh_opts(sshd, key),
            "-o", "ExitOnForwardFailure=yes", tunnel[-1], stdin=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            stats = await get_through_tunnel(f"http://127.0.0.1:{local}/system_stats", forward)
            assert "system" in stats
        finally:
            forward.terminate()
            await forward.wait()

        # the lessee leaves output behind; release: the host is wiped, then ready again
        host = next(m for m in hosts if m.user == user_of[doc["instance_id"]])
        output = host.home / "workspace" / "ComfyUI" / "output"
        output.mkdir(exist_ok=True)
        (output / "lessee.png").write_bytes(b"private")
        for path in (output, output / "lessee.png"):
            os.chown(path, host.uid, host.uid)  # the lessee's, as on the machine
        async with (
            aiohttp.ClientSession() as http,
            http.delete(
                f"{api}/v1/leases/{doc['lease_id']}",
                headers={"Authorization": f"Bearer {doc['lease_token']}"},
            ) as r,
        ):
            assert r.status == 200, await r.text()
        assert not await logs_in(sshd, key, host.user)
        assert await logs_in(sshd, sshd.client_key, host.user)  # the pool's own key

        async def host_ready_again():
            rows = await store.live()
            return [r for r in rows if r.ssh_user == host.user and r.state is State.READY]

        try:
            await wait_for(host_ready_again, 180, "the released host to be ready again", 0.5)
        except AssertionError:
            raise AssertionError(log.read_text(errors="replace")[-3000:]) from None
        assert not (output / "lessee.png").exists()
    finally:
        await store.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    assert "Traceback" not in log.read_text(errors="replace")
