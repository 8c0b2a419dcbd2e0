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

import asyncio
import json
import shlex
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Column, String, Table, Text, delete, insert, select

from comfyfleet.errors import ComfyfleetError
from comfyfleet.fleet.config import PoolConfig, VastProvider
from comfyfleet.fleet.states import FINAL, State
from comfyfleet.fleet.store import instances, metadata

if TYPE_CHECKING:
    import asyncssh

    from comfyfleet.fleet.driver import ProvisionDriver
    from comfyfleet.fleet.store import InstanceRow, Store

WATCHDOG = Path(__file__).with_name("watchdog.py")
#: under the login user's home, beside the agent's files
REMOTE_DIR = ".comfyfleet-agent"
HEARTBEAT = f"{REMOTE_DIR}/heartbeat"


instance_keys = Table(
    "instance_keys",
    metadata,
    Column("instance_id", String(32), primary_key=True),
    Column("pool", String(64), nullable=False),
    Column("api_key", Text, nullable=False),
)


async def remember_key(store: Store, row_id: str, api_key: str) -> None:
    """Keep the create answer's per-instance key for the watchdog (a secret: never logged)."""
    async with store.engine.begin() as conn:
        await conn.execute(delete(instance_keys).where(instance_keys.c.instance_id == row_id))
        await conn.execute(
            insert(instance_keys).values(instance_id=row_id, pool=store.pool, api_key=api_key)
        )


async def forget_final_keys(store: Store) -> int:
    """Delete the per-instance keys of instances that are gone (destroyed or lost): a
    secret is kept no longer than its instance lives. How many."""
    gone = select(instances.c.id).where(
        instances.c.pool == store.pool, instances.c.state.in_([s.value for s in FINAL])
    )
    async with store.engine.begin() as conn:
        result = await conn.execute(
            delete(instance_keys).where(
                instance_keys.c.pool == store.pool, instance_keys.c.instance_id.in_(gone)
            )
        )
    return result.rowcount or 0


async def instance_key(store: Store, row_id: str) -> str | None:
    """The per-instance key of ``row_id``, or None (the watchdog then reads PID 1's)."""
    async with store.engine.connect() as conn:
        query = select(instance_keys.c.api_key).where(instance_keys.c.instance_id == row_id)
        return await conn.scalar(query)


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


#: states in which an instance has an SSH endpoint and may run a watchdog
WATCHED = (State.PROVISIONING, State.READY, State.LEASED, State.RELEASING)


async def arm(driver: ProvisionDriver, row: InstanceRow, agent: Any) -> None:
    """Start the watchdog on ``row``'s instance over the agent's session (no-op when off)."""
    timeout = switch_timeout(driver.config)
    spec = driver.config.provider
    if timeout is None or not row.provider_id or not isinstance(spec, VastProvider):
        return
    conn = await agent._connection()  # the agent's logged-in session: no second login
    # the create answer's key; without it, the watchdog reads PID 1's CONTAINER_API_KEY
    key = await instance_key(driver.store, row.id)
    await start_watchdog(
        conn, api_url=spec.api_url, instance_id=row.provider_id, api_key=key, timeout=timeout
    )
    driver.log(f"{row.id}: dead-man's switch armed (destroys itself after {timeout:g}s alone)")


async def _connect(driver: ProvisionDriver, store: Store, row: InstanceRow) -> Any:
    """A connected agent for ``row``: its pinned host key, the pool's login key."""
    from comfyfleet.fleet import hostkeys
    from comfyfleet.fleet.agent import AgentOptions, ProvisionAgent

    policy = await hostkeys.policy_for(store, row.id, operator_known_hosts=None, operator=False)
    agent = ProvisionAgent(row.id, driver.endpoint(row), policy, AgentOptions())
    await agent.connect()
    return agent


async def keep_alive(
    driver: ProvisionDriver,
    store: Store,
    *,
    connect: Callable[[InstanceRow], Awaitable[Any]] | None = None,
) -> None:
    """The leader's loop: touch every watched instance's heartbeat every timeout/4.

    ``connect(row)`` returns a connected agent (default: pinned host key, the pool's key)."""
    timeout = switch_timeout(driver.config)
    if timeout is None:
        return
    connect = connect or (lambda row: _connect(driver, store, row))
    while True:
        for row in await store.live():
            if row.state not in WATCHED or not row.ssh_host:
                continue
            agent = None
            try:
                agent = await connect(row)
                if not await renew_heartbeat(await agent._connection()):
                    driver.log(f"{row.id}: heartbeat not renewed (touch failed)")
            except Exception as exc:  # unreachable now: its watchdog counts the silence
                driver.log(f"{row.id}: heartbeat not renewed: {str(exc)[:200]}")
            finally:
                if agent is not None:
                    await agent.close()
        await asyncio.sleep(max(1.0, timeout / 4))


__all__ = [
    "HEARTBEAT",
    "WATCHDOG",
    "DeadmanError",
    "arm",
    "forget_final_keys",
    "instance_key",
    "instance_keys",
    "keep_alive",
    "remember_key",
    "renew_heartbeat",
    "start_watchdog",
    "switch_timeout",
    "watchdog_input",
]
