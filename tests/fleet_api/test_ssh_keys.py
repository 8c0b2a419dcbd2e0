"""The lease key over REAL SSH: attached lazily at the take, logs in, reaches a stand-in
ComfyUI through the lease's ``ssh -N -L`` tunnel; after release it no longer logs in while
the pool's key and every other authorized_keys line still do (one Unix user per instance)."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from comfyfleet.fleet.keys import SshKeyInstaller
from sshd import SSHD, SshServer, free_port, get_through_tunnel, logs_in, ssh_opts

from .conftest import make_ready


@pytest.fixture(scope="module")
def sshd() -> Iterator[SshServer]:
    if not Path(SSHD).exists() or os.geteuid() != 0:  # pragma: no cover
        pytest.fail("these tests need OpenSSH sshd and root (.ci/run provides both)")
    root = Path("/tmp") / f"comfyfleet-api-sshd-{uuid.uuid4().hex[:8]}"
    root.mkdir(mode=0o755)
    server = SshServer(root)
    server.extra_options["AuthorizedKeysFile"] = ".ssh/authorized_keys"
    subprocess.run(  # another operator's key, which must keep working
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ops@laptop",
         "-f", str(root / "operator_ed25519")],
        check=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    server.start()
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def instance_user(sshd: SshServer) -> Iterator[tuple[str, Path]]:
    """A 'rented machine': its own Unix user, home and authorized_keys (pool key + another
    operator key, the last line without a newline)."""
    user = f"cfk{uuid.uuid4().hex[:8]}"
    homes = sshd.root / "home"
    homes.mkdir(exist_ok=True, mode=0o755)
    subprocess.run(
        ["useradd", "--create-home", "--base-dir", str(homes), "--shell", "/bin/sh",
         "--password", "*", user],
        check=True, capture_output=True,
    )  # fmt: skip
    entry = pwd.getpwnam(user)
    ssh_dir = Path(entry.pw_dir) / ".ssh"
    ssh_dir.mkdir(mode=0o700)
    keys = ssh_dir / "authorized_keys"
    pool_line = sshd.client_key.with_suffix(".pub").read_text().strip()
    operator_line = (sshd.root / "operator_ed25519.pub").read_text().strip()
    keys.write_text(f"{pool_line}\n{operator_line}")
    for p in (ssh_dir, keys):
        os.chown(p, entry.pw_uid, entry.pw_gid)
    yield user, keys
    subprocess.run(["pkill", "-KILL", "-u", user], capture_output=True)
    subprocess.run(["userdel", "--remove", user], capture_output=True)


async def _standin_comfyui() -> tuple[web.AppRunner, int]:
    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"system": {"comfyui_version": "standin"}})

    app = web.Application()
    app.router.add_get("/system_stats", stats)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


async def test_the_lease_key_logs_in_tunnels_to_comfyui_and_is_removed_on_release(
    start_api, sqlite_url, sshd, instance_user, tmp_path
):
    user, keys_file = instance_user
    before = keys_file.read_text()
    comfy, comfy_port = await _standin_comfyui()
    try:
        installer = SshKeyInstaller(lambda row: sshd.client_key, known_hosts=sshd.known_hosts)
        api = await start_api(sqlite_url, keys=installer, comfyui_port=lambda row: comfy_port)
        [row] = await make_ready(api.store, 1, ssh=("127.0.0.1", sshd.port, user), key=False)
        status, doc = await api.lease(wait_s=5)  # no standby key yet: attached at the take
        assert status == 201, doc
        lines = keys_file.read_text().splitlines()
        assert lines[:2] == before.splitlines()  # the unterminated last line kept whole
        assert lines[2].endswith(f":{row.id}:{doc['lease_id']}") and len(lines) == 3
        key = tmp_path / "lease.key"
        key.write_text(doc["private_key"])
        key.chmod(0o600)
        assert await logs_in(sshd, key, user)

        # the tunnel the lease names reaches ComfyUI on the instance's 127.0.0.1
        tunnel = doc["tunnel"].split()
        assert tunnel[:4] == ["ssh", "-N", "-L", f"{comfy_port}:127.0.0.1:{comfy_port}"]
        local = free_port()
        argv = ["ssh", "-N", "-L", f"{local}:127.0.0.1:{comfy_port}", *ssh_opts(sshd, key),
                "-o", "ExitOnForwardFailure=yes", tunnel[-1]]  # fmt: skip
        assert tunnel[-1] == f"{user}@127.0.0.1"
        proc = await asyncio.create_subprocess_exec(*argv, stdin=subprocess.DEVNULL)
        try:
            body = await get_through_tunnel(f"http://127.0.0.1:{local}/system_stats", proc)
            assert body["system"]["comfyui_version"] == "standin"
        finally:
            proc.terminate()
            await proc.wait()

        async with api.http.delete(
            f"{api.url}/v1/leases/{doc['lease_id']}",
            headers={"Authorization": f"Bearer {doc['lease_token']}"},
        ) as r:
            assert r.status == 200
        assert not await logs_in(sshd, key, user)
        assert await logs_in(sshd, sshd.client_key, user)  # the pool's own key
        assert await logs_in(sshd, sshd.root / "operator_ed25519", user)  # and the other
        assert keys_file.read_text().splitlines() == before.splitlines()  # every other line
    finally:
        await comfy.cleanup()
