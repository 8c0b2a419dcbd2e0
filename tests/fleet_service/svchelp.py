"""Helpers of the fleet service tests: a polled deadline, the pool's public key, an ssh
pool's POOL.toml and its `pool serve` process."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tomli_w

#: a syntactically valid OpenSSH public key the double records at create time
PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHc0bWZsZWV0dGVzdGtleWZvcnRoZWRvdWJsZQ test"


async def wait_for(
    predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.2
) -> Any:
    """Await ``predicate()`` (sync or async) until truthy; AssertionError after ``timeout``."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(step)


CLI = [sys.executable, "-c", "from comfyfleet.cli import main; main()"]
#: the operator token of the `pool serve` processes these tests start
API_TOKEN = "t" * 32


def write_config(
    tmp: Path, sshd: Any, hosts: list[Any], manifest: Path, *, listen: str = "127.0.0.1:0",
    **pool: Any,
) -> Path:  # fmt: skip
    """POOL.toml of an ssh pool of ``hosts`` (machines behind ``sshd``, host i at its
    address i: a pool's hosts differ in address and port), ComfyUI on "auto" ports;
    ``pool``: [pool] keys over the defaults (one ready instance)."""
    settings = {
        "name": "svc", "min_ready": 1, "max_instances": len(hosts), "manifest": str(manifest),
        "instance_root": "workspace", "comfyui_port": "auto", "provision_timeout": "5m",
        "tick": "0.3s", "backoff": "0.5s", "backoff_max": "2s", **pool,
    }  # fmt: skip
    doc = {
        "pool": settings,
        "provider": {
            "kind": "ssh",
            "known_hosts": str(sshd.known_hosts),
            "hosts": [
                {
                    "host": sshd.addresses[i % len(sshd.addresses)],
                    "port": sshd.port,
                    "user": m.user,
                    "key": str(sshd.client_key),
                }
                for i, m in enumerate(hosts)
            ],
        },
        "store": {"url": f"sqlite:///{tmp / 'pool.db'}"},
        "api": {"listen": listen},
    }
    config = tmp / "POOL.toml"
    config.write_text(tomli_w.dumps(doc))
    return config


def serve(config: Path, log: Path, server: Any) -> subprocess.Popen[bytes]:
    """`pool serve --config` as a child (stderr appended to ``log``), with the model
    server's endpoints and no hub token."""
    env = {k: v for k, v in os.environ.items() if k not in {"HF_TOKEN", "CIVITAI_TOKEN"}}
    env.update(server.endpoint_env())
    env["COMFYFLEET_API_TOKEN"] = API_TOKEN
    with log.open("ab") as out:
        return subprocess.Popen(
            [*CLI, "pool", "serve", "--config", str(config)],
            stdout=subprocess.DEVNULL, stderr=out, stdin=subprocess.DEVNULL, env=env,
        )  # fmt: skip


def service_fixtures(module_name: str) -> Any:
    """tests/fleet_service/conftest.py loaded as ``module_name``: its fixtures (sshd, one
    Unix user per machine, the Vast double pointing at the sshd) for another folder's tests."""
    import importlib.util

    path = Path(__file__).with_name("conftest.py")
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module
