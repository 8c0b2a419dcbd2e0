"""The SSH provisioning agent against real sshd, real users, the real demo world."""

from __future__ import annotations

import asyncio
import json
import os
import tomllib
from pathlib import Path

import asyncssh
import psutil
import pytest

from comfyfleet.errors import HostKeyError
from comfyfleet.fleet.agent import (
    AgentOptions,
    FileRunSinks,
    HostKeyPolicy,
    ProvisionAgent,
    ProvisionRun,
    with_port,
)
from comfyfleet.testing.demo_fixture import write_manifest
from comfyfleet.testing.modelserver import Faults, make_safetensors

pytestmark = pytest.mark.slow

DONE = b"PROVISIONING COMPLETE"


def options(server, **kw) -> AgentOptions:
    return AgentOptions(comfyui_port="auto", env=server.endpoint_env(), timeout=300, **kw)


def remote_log(instance, root: str = "workspace") -> bytes:
    return (instance.home / root / ".comfyfleet" / "provision.log").read_bytes()


def last_line(data: bytes) -> bytes:
    return data.rstrip(b"\n").rsplit(b"\n", 1)[-1]


def environ(pid: int) -> bytes:
    """The environment block of ``pid`` (b"" once it has exited)."""
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return b""


async def test_provision_to_ready_then_reprovision_installs_nothing(
    make_instance, world_for, server, tmp_path
):
    inst = make_instance()
    world = world_for(inst)
    logs = tmp_path / "logs"
    agent = ProvisionAgent("i-1", inst.endpoint, HostKeyPolicy.tofu(), options(server))
    assert await agent.connect() == inst.host_key  # first contact: the key to pin
    run = ProvisionRun("r-1", world.manifest_path, "workspace")
    result = await agent.provision(run, FileRunSinks(logs, "i-1", "r-1"))
    await agent.close()
    assert result.ready, result.message
    assert result.install.installed and result.install.uploaded > 10
    assert result.install.python_version >= (3, 11)
    local = (logs / "i-1" / "r-1" / "provision.log").read_bytes()
    assert local == remote_log(inst)
    assert last_line(local).endswith(DONE)
    assert (logs / "i-1" / "provision.log").resolve() == logs / "i-1" / "r-1" / "provision.log"
    assert result.progress.phase == "done"
    assert result.progress.bytes_done == result.progress.bytes_total > 0
    # The instance's environment said "no index" to every pip there, ComfyUI's included.
    pid = result.comfyui["pid"]
    assert b"PIP_NO_INDEX=1\x00" in environ(pid)
    assert result.comfyui["port"] != world.port  # "auto" chose a port on the instance

    # Reprovision: a new agent (as after a control-plane restart), the pinned key, new run.
    again = ProvisionAgent("i-1", inst.endpoint, HostKeyPolicy.pin(inst.host_key), options(server))
    second = await again.provision(
        ProvisionRun("r-2", world.manifest_path, "workspace"), FileRunSinks(logs, "i-1", "r-2")
    )
    await again.close()
    assert second.ready, second.message
    assert (second.install.installed, second.install.uploaded) == (False, 0)
    assert second.install.venv == result.install.venv
    local2 = (logs / "i-1" / "r-2" / "provision.log").read_bytes()
    assert local2 == remote_log(inst)  # this run's log only (the old one is provision.log.1)
    assert local2 != local and last_line(local2).endswith(DONE)
    assert (logs / "i-1" / "r-1" / "provision.log").read_bytes() == local
    assert (logs / "i-1" / "provision.log").resolve() == logs / "i-1" / "r-2" / "provision.log"


async def test_secrets_reach_only_the_download_engine(make_instance, world_for, server, tmp_path):
    inst = make_instance()
    world = world_for(inst)
    token = "hf_" + os.urandom(16).hex()
    private = make_safetensors(1024 * 1024, seed=9)
    url = server.add_hf_file(
        "private/models", "checkpoints/private.safetensors", private,
        gated=True, granted_tokens=(token,),
    )  # fmt: skip
    world.manifest["models"].append(
        {"url": url, "folder": "checkpoints", "filename": "private.safetensors"}
    )
    write_manifest(world.manifest_path, world.manifest)
    logs = tmp_path / "logs"
    agent = ProvisionAgent("i-2", inst.endpoint, HostKeyPolicy.pin(inst.host_key), options(server))
    run = ProvisionRun("r-1", world.manifest_path, "workspace", {"HF_TOKEN": token})
    result = await agent.provision(run, FileRunSinks(logs, "i-2", "r-1"))
    await agent.close()
    assert result.ready, result.message  # the gated file downloaded: the token got there
    landed = inst.home / "workspace" / "ComfyUI" / "models" / "checkpoints" / "private.safetensors"
    assert landed.read_bytes() == private
    secret = token.encode()
    for base in (inst.home, logs):
        for path in base.rglob("*"):
            if path.is_file() and not path.is_symlink():
                assert secret not in path.read_bytes(), path
    procs = inst.processes()
    assert result.comfyui["pid"] in [p.pid for p in procs]  # ComfyUI outlives provisioning
    assert environ(result.comfyui["pid"])  # readable, as a root lessee would read it
    for p in procs:
        try:
            cmdline = p.cmdline()
        except psutil.NoSuchProcess:
            continue
        assert secret not in environ(p.pid), cmdline
        assert secret not in " ".join(cmdline).encode()


async def test_follower_killed_mid_run_resumes_without_loss_or_duplicates(
    make_instance, world_for, server, tmp_path
):
    inst = make_instance()
    world = world_for(inst)
    slow = make_safetensors(3 * 1024 * 1024, seed=7)
    url = server.add_file("slow/slow.safetensors", slow, faults=Faults(rate=128 * 1024))
    world.manifest["models"].append({"url": url, "folder": "loras", "filename": "slow.safetensors"})
    write_manifest(world.manifest_path, world.manifest)
    logs = tmp_path / "logs"
    run = ProvisionRun("r-1", world.manifest_path, "workspace")
    sinks = FileRunSinks(logs, "i-3", "r-1")
    local = logs / "i-3" / "r-1" / "provision.log"
    events = logs / "i-3" / "r-1" / "events.jsonl"
    agent = ProvisionAgent("i-3", inst.endpoint, HostKeyPolicy.pin(inst.host_key), options(server))
    seen: list[str] = []
    task = asyncio.create_task(
        agent.provision(run, sinks, on_progress=lambda p: seen.append(p.phase))
    )
    while not (
        events.exists()
        and b'"file_progress"' in events.read_bytes()
        and b"slow.safetensors" in events.read_bytes()
    ):
        assert not task.done(), task.result()
        await asyncio.sleep(0.05)
    task.cancel()  # the control plane goes away mid-download
    with pytest.raises(asyncio.CancelledError):
        await task
    await agent.close()
    cut = local.read_bytes()
    assert not last_line(cut).endswith(DONE)

    # A new control plane: launching the same run again starts nothing; following resumes.
    again = ProvisionAgent("i-3", inst.endpoint, HostKeyPolicy.pin(inst.host_key), options(server))
    install = await again.install()
    assert not install.installed
    assert (await again.launch(run, install)).started is False
    result = await again.provision(run, sinks)
    await again.close()
    assert result.ready, result.message
    assert result.launch.started is False
    final = local.read_bytes()
    assert final == remote_log(inst) and final.startswith(cut)
    remote_events = (inst.home / "workspace" / ".comfyfleet" / "events.jsonl").read_bytes()
    assert events.read_bytes() == remote_events  # first run on this root: all of it
    names = [json.loads(line)["event"] for line in events.read_bytes().splitlines()]
    assert names.count("run_started") == 1 and names[-1] == "run_completed"
    assert "download" in seen


async def test_a_pinned_key_of_another_machine_is_refused(make_instance, world_for, server):
    inst = make_instance()
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    agent = ProvisionAgent("i-4", inst.endpoint, HostKeyPolicy.pin(other), options(server))
    with pytest.raises(HostKeyError, match="does not match the key pinned"):
        await agent.connect()


def test_with_port_rewrites_or_adds_the_port():
    def args(text: str) -> list[str]:
        return tomllib.loads(text)["comfyui"]["args"]

    text = (
        '[comfyui]\nargs = ["--listen", "127.0.0.1", "--port", "8188"]\n[download]\nretries = 2\n'
    )
    assert args(with_port(text, 9001)) == ["--listen", "127.0.0.1", "--port", "9001"]
    assert tomllib.loads(with_port(text, 9001))["download"] == {"retries": 2}
    added = with_port('[comfyui]\nargs = ["--listen", "127.0.0.1"]\n', 9002)
    assert args(added) == ["--listen", "127.0.0.1", "--port", "9002"]
