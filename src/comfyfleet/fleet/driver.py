"""Provision one instance of the pool: pick the run, run the agent (or the local runner),
keep its log in the store, and say whether the instance is ready.

The run is recorded before anything starts it, and reused by a restarted control plane: the
agent's per-run start lock (or the local slot's run record) then refuses a second start and
the log is followed on from the store's checkpoint. Secrets come from the control plane's
environment (``[pool] secrets`` names them) and travel only on the SSH session's stdin.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh

from comfyfleet.errors import ComfyfleetError, HostKeyError
from comfyfleet.fleet import hostkeys, logstore
from comfyfleet.fleet.agent import (
    AgentError,
    AgentOptions,
    Endpoint,
    ProvisionAgent,
    ProvisionRun,
)
from comfyfleet.fleet.config import PoolConfig, SshProvider, VastProvider
from comfyfleet.fleet.providers.base import Provider
from comfyfleet.fleet.store import InstanceRow, Store
from comfyfleet.names import escape_controls
from comfyfleet.redact import redact_text

#: first pause before contacting an instance again that did not answer (doubles, capped)
RETRY_FIRST = 1.0
RETRY_CAP = 15.0


@dataclass(frozen=True)
class Outcome:
    """How one provision ended: ready, or failed with a reason for a person."""

    ready: bool
    reason: str
    run_id: str


class Unreachable(Exception):
    """The instance did not answer yet (try again until provision_timeout)."""


class ProvisionDriver:
    """Runs provisions for one pool (one call of :meth:`provision` per instance and run)."""

    def __init__(
        self,
        config: PoolConfig,
        store: Store,
        provider: Provider,
        *,
        log: Callable[[str], None],
        endpoint_for: Callable[[InstanceRow], Endpoint] | None = None,
        agent_cache: Path | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.provider = provider
        self.log = log
        self.endpoint_for = endpoint_for
        self.agent_cache = agent_cache
        self.logs_dir = config.base_dir / "logs"

    def secrets(self) -> dict[str, str]:
        """The pool's secrets that are set in our environment (never stored or logged)."""
        return {n: os.environ[n] for n in self.config.pool.secrets if os.environ.get(n)}

    async def provision(self, row: InstanceRow, *, new_run: bool = False) -> Outcome:
        """Provision ``row`` (adopting its unfinished run unless ``new_run``) until it ends."""
        run = await logstore.current_run(self.store, row.id)
        if run is not None and run.outcome is not None and not new_run:
            return Outcome(run.outcome == "complete", run.reason or "", run.run_id)
        if run is None or new_run or run.outcome is not None:
            run = await logstore.begin_run(self.store, row.id)
        sinks = await logstore.StoreRunSinks.open(self.store, row.id, run.run_id, self.logs_dir)
        try:
            if self.provider.kind == "local":
                ready, reason, port = await self._local(row, sinks)
            else:
                ready, reason, port = await self._ssh(row, run.run_id, sinks)
        finally:
            await sinks.drain()
        reason = escape_controls(redact_text(reason))[:500]
        await logstore.end_run(
            self.store, row.id, run.run_id, "complete" if ready else "failed", reason,
            comfyui_port=port if ready else None,
        )  # fmt: skip
        return Outcome(ready, reason, run.run_id)

    async def prepare_reprovision(self, row: InstanceRow) -> str:
        """Record the next run (before the wipe and the restart of provisioning): a restarted
        control plane then reprovisions instead of taking the last run's outcome again."""
        run = await logstore.current_run(self.store, row.id)
        if run is not None and run.outcome is None:
            return run.run_id  # recorded already (a release flow interrupted and re-run)
        return (await logstore.begin_run(self.store, row.id)).run_id

    async def wipe(self, row: InstanceRow) -> None:
        """Stop ComfyUI and wipe its output/, input/ and user data on the instance."""
        spec = self.config.provider
        operator = isinstance(spec, SshProvider)
        known = self.config.resolve(spec.known_hosts) if operator and spec.known_hosts else None
        policy = await hostkeys.policy_for(
            self.store, row.id, operator_known_hosts=known, operator=operator
        )
        agent = ProvisionAgent(row.id, self.endpoint(row), policy)
        try:
            await agent.wipe(self.config.pool.instance_root)
        finally:
            await agent.close()

    # --- kind local ------------------------------------------------------------------------

    async def _local(
        self, row: InstanceRow, sinks: logstore.StoreRunSinks
    ) -> tuple[bool, str, int | None]:
        from comfyfleet.fleet.local_runner import LocalRunner
        from comfyfleet.fleet.providers.local import LocalProvider

        assert isinstance(self.provider, LocalProvider) and row.provider_id is not None
        runner = LocalRunner.for_pool(self.config, self.provider)
        out = await runner.provision(row.provider_id, row.label, sinks.sink("provision.log"))
        if out.ready:
            return True, "", _port(out.comfyui)
        return False, out.reason or "ComfyUI is not healthy after provisioning", None

    # --- over SSH --------------------------------------------------------------------------

    def endpoint(self, row: InstanceRow) -> Endpoint:
        """Where to log in: the row's SSH endpoint and the pool's key."""
        if self.endpoint_for is not None:
            return self.endpoint_for(row)
        spec = self.config.provider
        if isinstance(spec, SshProvider):
            for h in spec.hosts:
                if f"{h.host}:{h.port}" == row.provider_id:
                    key = self.config.resolve(h.key) if h.key else None
                    return Endpoint(h.host, h.port, h.user, key)
        assert row.ssh_host and row.ssh_port, "provisioning rows have an SSH endpoint"
        key = self.config.resolve(spec.ssh_key) if isinstance(spec, VastProvider) else None
        return Endpoint(row.ssh_host, row.ssh_port, row.ssh_user or "root", key)

    async def _ssh(
        self, row: InstanceRow, run_id: str, sinks: logstore.StoreRunSinks
    ) -> tuple[bool, str, int | None]:
        spec = self.config.provider
        operator = isinstance(spec, SshProvider)
        known = self.config.resolve(spec.known_hosts) if operator and spec.known_hosts else None
        section = self.config.pool
        remaining = max(1.0, section.provision_timeout - (self.store._clock() - row.created_at))
        options = AgentOptions(
            comfyui_port=section.comfyui_port, timeout=remaining, cache=self.agent_cache
        )
        run = ProvisionRun(
            run_id, self.config.manifest_path, section.instance_root, self.secrets(),
            instance_id=row.id,
        )  # fmt: skip
        delay = RETRY_FIRST
        said = False
        while True:
            policy = await hostkeys.policy_for(
                self.store, row.id, operator_known_hosts=known, operator=operator
            )
            agent = ProvisionAgent(row.id, self.endpoint(row), policy, options)
            try:
                try:
                    key = await agent.connect()
                except (AgentError, OSError) as exc:
                    raise Unreachable(str(exc)) from None
                if policy.trust_on_first_use and key:
                    pinned = await hostkeys.pin_key(self.store, row.id, key)
                    if pinned != key:  # another replica pinned another key first
                        return False, "host key changed since the first contact", None
                # (wave2: fleet-replicas) the dead-man's switch, armed before provision starts
                from comfyfleet.fleet import deadman

                await deadman.arm(self, row, agent)
                result = await agent.provision(
                    run, sinks, on_progress=lambda p: sinks.set_progress(p.to_json())
                )
            except (Unreachable, asyncssh.Error, OSError) as exc:
                if not said:
                    self.log(f"{row.id}: not reachable over SSH yet, retrying: {exc}")
                    said = True
                await asyncio.sleep(random.uniform(delay / 2, delay))
                delay = min(delay * 2, RETRY_CAP)
                continue
            except HostKeyError as exc:
                return False, f"host key refused: {exc}", None
            except ComfyfleetError as exc:
                return False, str(exc), None
            finally:
                await agent.close()
            if result.ready:
                return True, "", _port(result.comfyui)
            if result.outcome == "complete":
                return False, "provisioning completed but ComfyUI is not healthy", None
            return False, result.message or result.outcome, None


def _port(status: Mapping[str, Any] | None) -> int | None:
    """ComfyUI's port from `comfyfleet status --json` (None when it does not say)."""
    port = (status or {}).get("port")
    return port if isinstance(port, int) and not isinstance(port, bool) else None
