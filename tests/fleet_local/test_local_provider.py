"""The local provider end to end: real provisions of the demo world in two slots of one machine."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from comfyfleet.fleet.errors import OfferUnavailable
from comfyfleet.fleet.local_runner import LocalRunner
from comfyfleet.fleet.ownership import new_label
from comfyfleet.fleet.providers.base import POOL_ENV
from comfyfleet.fleet.providers.local import (
    RUN_ENV,
    LocalProvider,
    read_run,
    slot_manifest,
    write_run,
)
from comfyfleet.testing.demo_fixture import DemoWorld, write_manifest
from comfyfleet.testing.modelserver import ModelServer

from .conftest import FileSink

ENV = {POOL_ENV: "lp"}


def comfyui_pid(provider: LocalProvider, slot: str) -> int:
    doc = json.loads((provider.slots[slot].root / ".comfyfleet" / "comfyui.pid").read_text())
    return int(doc["pid"])


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def answers(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def fetches(server: ModelServer, fragment: str) -> int:
    """How many times the bytes of ``fragment`` were fetched: each download's first range
    starts at byte 0 (later ranges are split off it), so count those."""
    return sum(
        (r.range or "bytes=0-").startswith("bytes=0-") for r in server.requests_for(fragment, "GET")
    )


async def claim_both(provider: LocalProvider) -> list[str]:
    labels = []
    for offer in await provider.search_offers():
        labels.append(new_label("lp"))
        await provider.create(offer, label=labels[-1], env=ENV, onstart="", ssh_public_key="")
    return labels


async def test_two_slots_provision_in_parallel_on_their_own_ports_and_gpus(
    world: DemoWorld, provider: LocalProvider, server: ModelServer, tmp_path: Path
) -> None:
    labels = await claim_both(provider)
    assert await provider.search_offers() == []
    runner = LocalRunner(provider, world.manifest_path)
    sinks = [FileSink(tmp_path / f"log{i}") for i in range(2)]

    outcomes = await asyncio.gather(
        *(runner.provision(str(i), labels[i], sinks[i]) for i in range(2))
    )

    for i, out in enumerate(outcomes):
        slot = provider.slots[str(i)]
        assert (out.outcome, out.reason) == ("complete", "")
        assert out.ready and out.url == f"http://127.0.0.1:{slot.port}"
        assert answers(slot.port)
        assert environ(comfyui_pid(provider, str(i)))["CUDA_VISIBLE_DEVICES"] == str(slot.gpu)
        sinks[i].close()
        assert sinks[i].path.read_bytes() == (slot.root / ".comfyfleet/provision.log").read_bytes()
        assert b"PROVISIONING COMPLETE" in sinks[i].path.read_bytes()
    assert comfyui_pid(provider, "0") != comfyui_pid(provider, "1")
    # every shared model came over the network once, and both roots hold the same inode
    roots = [provider.slots[s].root for s in ("0", "1")]
    for name in world.model_urls:
        (path,) = roots[0].rglob(name)
        rel = path.relative_to(roots[0])
        assert len({(root / rel).stat().st_ino for root in roots}) == 1, name
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        fragment = f"/cdn/hf/{sha}" if "/resolve/" in world.model_urls[name] else f"/{name}"
        assert fetches(server, fragment) == 1, name

    # destroy frees the slot: the port closes, no process is left, the slot is offered again
    pids = [comfyui_pid(provider, "0"), read_run(provider.slots["0"])["pid"]]
    await provider.destroy("0", label=labels[0])
    assert not answers(provider.slots["0"].port)
    assert all(gone(p) for p in pids)
    assert await provider.get("0") is None
    assert [o.offer_id for o in await provider.search_offers()] == ["0"]
    assert answers(provider.slots["1"].port)  # the other instance is untouched


async def test_create_refuses_a_taken_slot_and_destroy_leaves_another_label_alone(
    provider: LocalProvider,
) -> None:
    offer = (await provider.search_offers())[0]
    label = new_label("lp")
    assert (await provider.create(offer, label=label, env=ENV)).provider_id == "0"
    with pytest.raises(OfferUnavailable):
        await provider.create(offer, label=new_label("lp"), env=ENV)
    listed = await provider.list_instances()
    assert [(i.provider_id, i.label, i.pool_marker, i.status, i.ssh) for i in listed] == [
        ("0", label, "lp", "running", None)
    ]
    assert provider.health(listed[0])[0] == "reachable"
    await provider.destroy("0", label=new_label("lp"))  # not the label that holds it
    assert (await provider.get("0")).label == label
    await provider.destroy("0")
    await provider.destroy("0")  # idempotent
    assert await provider.get("0") is None


def test_the_slot_manifest_has_the_slot_port_and_absolute_workflow_paths(
    world: DemoWorld, provider: LocalProvider
) -> None:
    import comfyfleet

    slot = provider.slots["1"]
    slot.dir.mkdir(parents=True)
    m = comfyfleet.load_manifest(slot_manifest(world.manifest_path, slot))
    assert m.comfyui.port == slot.port
    assert m.comfyui.args.count("--port") == 1
    assert m.workflow_source(m.workflows[0]).is_file()


RUNNER = """
import asyncio, sys
from pathlib import Path
from comfyfleet.fleet.local_runner import LocalRunner
from comfyfleet.fleet.providers.local import LocalProvider
from tests.fleet_local.conftest import FileSink
base, ports, manifest, label, sink = sys.argv[1:]
prov = LocalProvider(Path(base), [int(p) for p in ports.split(",")], [3, 5], pool="lp")
asyncio.run(LocalRunner(prov, Path(manifest)).provision("0", label, FileSink(Path(sink))))
"""


async def test_a_killed_runner_restarted_adopts_the_running_provision(
    world: DemoWorld, provider: LocalProvider, tmp_path: Path
) -> None:
    label = (await claim_both(provider))[0]
    sink_path = tmp_path / "log0"
    ports = ",".join(str(s.port) for s in provider.slots.values())
    runner = subprocess.Popen(
        [sys.executable, "-c", RUNNER, str(provider.base_dir), ports, str(world.manifest_path),
         label, str(sink_path)],
        cwd=Path(__file__).parents[2],
    )  # fmt: skip
    slot = provider.slots["0"]
    deadline = time.monotonic() + 60
    while not (sink_path.exists() and sink_path.stat().st_size > 0):
        assert time.monotonic() < deadline and runner.poll() is None, "runner never followed"
        await asyncio.sleep(0.05)
    os.kill(runner.pid, signal.SIGKILL)
    runner.wait()
    first = read_run(slot)

    out = await LocalRunner(provider, world.manifest_path).provision(
        "0", label, FileSink(sink_path)
    )

    assert (out.outcome, out.adopted, out.ready) == ("complete", True, True)
    assert read_run(slot) == first  # no second provision was started
    events = (slot.root / ".comfyfleet/events.jsonl").read_text().splitlines()
    assert sum(json.loads(e)["event"] == "run_started" for e in events) == 1
    # exactly once across the kill: the copy is the log, no byte lost or doubled
    assert sink_path.read_bytes() == (slot.root / ".comfyfleet/provision.log").read_bytes()


def test_pool_config_kind_local_builds_the_local_provider(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from comfyfleet.fleet.config import load_pool_config
    from comfyfleet.fleet.startup import build_provider

    (tmp_path / "pool.toml").write_text(
        '[pool]\nname = "lp"\nmanifest = "m.toml"\n'
        '[provider]\nkind = "local"\nbase_dir = "srv"\nports = [8301, 8302]\ngpus = [0, 1]\n'
    )
    config = load_pool_config(tmp_path / "pool.toml")
    prov = build_provider(config)
    assert isinstance(prov, LocalProvider) and prov.kind == "local"
    assert prov.content_store == tmp_path.resolve() / "srv" / "content"
    assert [(s.port, s.gpu, s.dir) for s in prov.slots.values()] == [
        (8301, 0, tmp_path.resolve() / "srv/slots/0"),
        (8302, 1, tmp_path.resolve() / "srv/slots/1"),
    ]
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    monkeypatch.delenv("CIVITAI_TOKEN", raising=False)
    runner = LocalRunner.for_pool(config, prov)
    assert runner.secrets == {"HF_TOKEN": "hf_secret"}  # the pool's names that are set
    assert runner.manifest == tmp_path.resolve() / "m.toml"


async def test_an_intent_without_a_pid_is_resolved_by_the_runs_token(
    world: DemoWorld, provider: LocalProvider, tmp_path: Path
) -> None:
    """The runner died between writing its intent and recording the pid: the provision it
    started is found by its token (and adopted); an intent that never started is started."""
    label = (await claim_both(provider))[0]
    slot = provider.slots["0"]
    intent = {"label": label, "run": "feedc0de", "pid": None, "start_ticks": None, "skip": None}
    write_run(slot, intent)
    orphan = subprocess.Popen(
        [sys.executable, "-m", "comfyfleet", "provision", str(slot_manifest(world.manifest_path,
         slot)), "--root", str(slot.root), "--content-store", str(provider.content_store)],
        env={**os.environ, RUN_ENV: "feedc0de", **slot.env}, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        out = await LocalRunner(provider, world.manifest_path).provision(
            "0", label, FileSink(tmp_path / "log0")
        )
    finally:
        orphan.wait(60)
    assert (out.outcome, out.adopted, out.ready) == ("complete", True, True)
    assert read_run(slot)["pid"] == orphan.pid
    events = (slot.root / ".comfyfleet/events.jsonl").read_text().splitlines()
    assert sum(json.loads(e)["event"] == "run_started" for e in events) == 1

    other = provider.slots["1"]
    labels = [i.label for i in await provider.list_instances() if i.provider_id == "1"]
    write_run(other, {**intent, "label": labels[0], "run": "0ddba11"})
    out = await LocalRunner(provider, world.manifest_path).provision(
        "1", labels[0], FileSink(tmp_path / "log1")
    )
    assert (out.outcome, out.adopted) == ("complete", False)
    assert read_run(other)["run"] == "0ddba11" and read_run(other)["pid"] is not None


async def test_a_failed_provision_reports_the_reason_from_its_marker(
    world: DemoWorld, provider: LocalProvider, server: ModelServer, tmp_path: Path
) -> None:
    manifest = tomllib.loads(world.manifest_path.read_text())
    manifest["models"].append(
        {"url": f"{server.base_url}/files/missing.safetensors", "folder": "loras"}
    )
    bad = world.manifest_path.with_name("bad.toml")
    write_manifest(bad, manifest)
    label = (await claim_both(provider))[0]

    out = await LocalRunner(provider, bad).provision("0", label, FileSink(tmp_path / "log"))

    assert out.outcome == "failed" and not out.ready
    assert out.exit_code == 1
    assert "required model(s) failed to download" in out.reason
    assert "missing.safetensors" in out.reason
    assert not answers(provider.slots["0"].port)  # ComfyUI was never started
