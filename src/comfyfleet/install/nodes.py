"""Custom nodes: clone each ``[[nodes]]`` repo at its ref, install its requirements, run install.py.

Clones run in parallel; pip runs one at a time (two pips writing one site-packages race).
Every failure is recorded on the node's result and never reported as success — the anchors'
most common bug (cm-cli exiting 0 after a failed install, ComfyUI-Manager #1314). Whether a
failure fails the run is the caller's decision (``critical``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comfyfleet.errors import ComfyfleetError, CommandFailed
from comfyfleet.events import RunLog
from comfyfleet.install.comfyui import (
    Environment,
    file_digest,
    has_requirements,
    load_state,
    save_state,
)
from comfyfleet.install.git import ensure_checkout
from comfyfleet.install.process import run_command
from comfyfleet.install.registry import registry_repo
from comfyfleet.manifest import Manifest, NodeEntry
from comfyfleet.redact import redact_url

#: clones at once
CLONE_CONCURRENCY = 4


@dataclass
class NodeResult:
    """What happened to one custom node."""

    repo: str
    ref: str | None
    name: str
    critical: bool
    commit: str | None = None
    #: ``installed`` (new or changed), ``unchanged``, ``failed``
    status: str = "failed"
    error: str | None = None
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The ``nodes[]`` entry of the provision --json document."""
        return {
            "repo": redact_url(self.repo),
            "ref": self.ref,
            "commit": self.commit,
            "status": self.status,
            "critical": self.critical,
            "error": self.error,
        }


async def install_nodes(
    manifest: Manifest,
    root: Path,
    log: RunLog,
    *,
    env: Environment,
    pip_lock: asyncio.Lock | None = None,
) -> list[NodeResult]:
    """Install every ``[[nodes]]`` entry; return one result per node (never raises for a node)."""
    custom_nodes = manifest.comfyui_dir(root) / "custom_nodes"
    custom_nodes.mkdir(parents=True, exist_ok=True)
    pip_lock = pip_lock or asyncio.Lock()
    clone_slots = asyncio.Semaphore(CLONE_CONCURRENCY)
    results = [
        NodeResult(repo=n.repo or "", ref=n.ref, name=n.name, critical=n.critical)
        for n in manifest.nodes
    ]

    async def one(entry: NodeEntry, result: NodeResult) -> None:
        try:
            repo = entry.repo
            if not repo and entry.registry_id:  # a Comfy Registry id: find its repo first
                repo = result.repo = await registry_repo(entry.registry_id, root)
            await _install_one(
                entry, repo or "", result, custom_nodes / entry.name, root, log, env,
                clone_slots, pip_lock,
            )  # fmt: skip
        except ComfyfleetError as exc:
            result.status = "failed"
            result.error = exc.message
        if result.status == "failed":
            level = "critical node" if entry.critical else "node"
            log.error(
                f"{level} {entry.name}", result.error or "failed", repo=entry.repo, ref=entry.ref
            )
            log.emit(
                "node_failed",
                repo=entry.repo,
                ref=entry.ref,
                name=entry.name,
                critical=entry.critical,
                error=result.error,
            )
        else:
            log.info(
                "node", f"{entry.name}: {result.status} at {result.commit and result.commit[:12]}"
            )
            log.emit(
                "node_installed",
                repo=entry.repo,
                ref=entry.ref,
                name=entry.name,
                commit=result.commit,
                status=result.status,
            )

    async with asyncio.TaskGroup() as tg:
        for entry, result in zip(manifest.nodes, results, strict=True):
            tg.create_task(one(entry, result))
    return results


async def _install_one(
    entry: NodeEntry,
    repo: str,
    result: NodeResult,
    dest: Path,
    root: Path,
    log: RunLog,
    env: Environment,
    clone_slots: asyncio.Semaphore,
    pip_lock: asyncio.Lock,
) -> None:
    source = f"node {entry.name}"
    async with clone_slots:
        checkout = await ensure_checkout(repo, entry.ref, dest, log=log, source=source)
    result.commit = checkout.commit
    if checkout.warning:
        result.warnings.append(checkout.warning)
        log.info("node", f"{entry.name}: {checkout.warning}")
    requirements = dest / "requirements.txt"
    install_py = dest / "install.py"
    digest = (
        file_digest(requirements, install_py, env.constraints) + checkout.commit + str(env.python)
    )
    state_key = f"node:{entry.name}"
    if load_state(root).get(state_key) == digest and checkout.action == "unchanged":
        result.status = "unchanged"
        return
    async with pip_lock:
        try:
            if has_requirements(requirements):
                await run_command(
                    env.pip_install(requirements),
                    log=log,
                    source=f"pip {entry.name}",
                    cwd=dest,
                    env=env.pip_env,
                )
            if install_py.is_file():
                await run_command(
                    [str(env.python), str(install_py)],
                    log=log,
                    source=f"install.py {entry.name}",
                    cwd=dest,
                    env=env.pip_env,
                )
        except CommandFailed as exc:
            pinned = ", ".join(f"{k}=={v}" for k, v in sorted(env.pinned.items()))
            why = exc.message
            if pinned and "conflict" in exc.output_tail.lower():
                why += f"\n(the torch family is pinned: {pinned}; the node wants another version)"
            result.status = "failed"
            result.error = why
            return
    state = load_state(root)
    state[state_key] = digest
    save_state(root, state)
    result.status = "installed"
