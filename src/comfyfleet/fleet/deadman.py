"""The dead-man's switch (Vast.ai only, ``[pool] dead_man_switch``): an instance that no control
plane has heard from for that long destroys itself, so nothing bills forever once every
control plane is gone.

On the instance, :mod:`comfyfleet.fleet.watchdog` (stdlib only, shipped as it is) runs detached
and destroys its own instance through the Vast API with the instance's own id and
per-instance key (the create answer's ``instance_api_key``; the watchdog falls back to PID 1's
``CONTAINER_ID``/``CONTAINER_API_KEY``). The key travels on stdin, never in argv, a file or a
log. The control plane renews the heartbeat by touching a file over SSH while it follows the
instance. Never on ``kind = "ssh"`` hosts, where destroying the machine is not ours to do.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from comfyfleet.errors import ComfyfleetError
from comfyfleet.fleet.config import PoolConfig, VastProvider

if TYPE_CHECKING:
    import asyncssh

WATCHDOG = Path(__file__).with_name("watchdog.py")
#: under the login user's home, beside the agent's files
REMOTE_DIR = ".comfyfleet-agent"
HEARTBEAT = f"{REMOTE_DIR}/heartbeat"


class DeadmanError(ComfyfleetError):
    """The watchdog could not be started on the instance."""


def switch_timeout(config: PoolConfig) -> float | None:
    """Seconds without a heartbeat before an instance destroys itself; None when off (the
    setting is unset, or the provider is not Vast.ai)."""
    if not isinstance(config.provider, VastProvider):
        return None
    return config.pool.dead_man_switch or None


def watchdog_input(
    *,
    api_url: str,
    instance_id: str | None,
    api_key: str | None,
    heartbeat: str,
    timeout: float,
    check_every: float | None = None,
) -> str:
    """The JSON the watchdog reads on stdin (it holds the instance's key: never log it)."""
    doc: dict[str, object] = {
        "api_url": api_url,
        "instance_id": instance_id or "",
        "api_key": api_key or "",
        "heartbeat": heartbeat,
        "timeout": timeout,
    }
    if check_every is not None:
        doc["check_every"] = check_every
    return json.dumps(doc)


async def start_watchdog(
    conn: asyncssh.SSHClientConnection,
    *,
    api_url: str,
    instance_id: str,
    api_key: str | None,
    timeout: float,
    python: str = "python3",
) -> str:
    """Upload the watchdog and start it detached on the instance; its "started (pid N)" line.

    ``api_key`` None: the watchdog reads CONTAINER_API_KEY from PID 1's environment."""
    async with conn.start_sftp_client() as sftp:
        await sftp.makedirs(REMOTE_DIR, exist_ok=True)
        await sftp.put(str(WATCHDOG), f"{REMOTE_DIR}/watchdog.py")
    home = (await conn.run('printf %s "$HOME"', check=False)).stdout or "."
    stdin = watchdog_input(
        api_url=api_url,
        instance_id=instance_id,
        api_key=api_key,
        heartbeat=f"{str(home).rstrip('/')}/{HEARTBEAT}",
        timeout=timeout,
    )
    command = f"{shlex.quote(python)} {REMOTE_DIR}/watchdog.py --detach"
    result = await conn.run(command, input=stdin, check=False)
    out = str(result.stdout or "").strip()
    if result.exit_status != 0 or "started" not in out:
        # stderr may name the path, never the key (the watchdog does not print its input)
        raise DeadmanError(
            f"instance {instance_id}: the dead-man's switch did not start "
            f"(exit {result.exit_status}): {str(result.stderr or '').strip()[:200]}",
            hint="the instance needs python3; the pool keeps the instance tracked meanwhile",
        )
    return out


async def renew_heartbeat(conn: asyncssh.SSHClientConnection) -> bool:
    """Touch the heartbeat file (the control plane is alive); False when it failed."""
    result = await conn.run(f"touch {HEARTBEAT}", check=False)
    return result.exit_status == 0


__all__ = [
    "HEARTBEAT",
    "WATCHDOG",
    "DeadmanError",
    "renew_heartbeat",
    "start_watchdog",
    "switch_timeout",
    "watchdog_input",
]
