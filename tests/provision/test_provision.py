"""provision end to end: real git, real pip, the real model server, a real ComfyUI process."""

from __future__ import annotations

import json
from pathlib import Path

from comfyfleet import runtime
from comfyfleet.events import EVENT_NAMES, MARKER_COMPLETE, MARKER_FAILED
from comfyfleet.manifest import load_manifest
from comfyfleet.provisioning import provision
from comfyfleet.testing.demo_fixture import DEMO_NODE_CLASS, DemoWorld, write_manifest
from comfyfleet.testing.modelserver import ModelServer
from comfyfleet.testing.repos import make_node_repo, offline_requirements


def _last_line(root: Path) -> str:
    return (root / ".comfyfleet" / "provision.log").read_text().rstrip("\n").splitlines()[-1]


def _file_requests(server: ModelServer) -> list:
    return [r for r in server.requests if r.method == "GET"]


async def test_fresh_root_ends_with_a_ready_comfyui_that_lists_every_model(
    world: DemoWorld, root: Path
):
    manifest = load_manifest(world.manifest_path)

    report = await provision(manifest, root)

    assert report.ok, report.reason
    doc = report.to_json()
    assert {f["status"] for f in doc["files"]} == {"verified"}
    assert doc["comfyui"]["ready"] is True and doc["comfyui"]["port"] == world.port
    assert [n["status"] for n in doc["nodes"]] == ["installed"]
    assert doc["nodes"][0]["commit"] == world.node.commit
    assert {"download", "install", "verify", "start"} <= set(doc["phases"])
    assert (root / ".provisioning_complete").exists() and not (root / ".provisioning").exists()
    assert _last_line(root) == MARKER_COMPLETE
    ready = await runtime.check_ready(
        "127.0.0.1",
        world.port,
        runtime.Expectations(
            models=[("checkpoints", "demo_sd15.safetensors"), ("vae", "demo_vae.safetensors"),
                    ("loras", "demo_style_lora.safetensors")],
            classes=[DEMO_NODE_CLASS],
        ),
    )  # fmt: skip
    assert ready.ready, ready.problems
    installed = json.loads((root / "ComfyUI/user/default/workflows/demo_t2i.json").read_text())
    save = next(n for n in installed["nodes"] if n["type"] == "SaveImage")
    assert save["widgets_values"] == ["demo/out"]
    events = [json.loads(line)["event"] for line in (root / ".comfyfleet/events.jsonl").open()]
    for name in ("run_started", "phase_started", "node_installed", "validation", "comfyui_started",
                 "comfyui_ready", "run_completed", "file_queued", "file_started",
                 "file_verified"):  # fmt: skip
        assert name in events
    # Every name emitted is one of the documented, public event names.
    assert set(events) <= EVENT_NAMES, set(events) - EVENT_NAMES


async def test_second_run_downloads_nothing_clones_nothing_and_adopts_comfyui(
    world: DemoWorld, root: Path, server: ModelServer
):
    manifest = load_manifest(world.manifest_path)
    first = await provision(manifest, root)
    assert first.ok, first.reason
    requests_before = len(_file_requests(server))
    head_before = (root / "ComfyUI/.git/HEAD").stat().st_mtime_ns

    second = await provision(manifest, root)

    assert second.ok, second.reason
    assert _file_requests(server)[requests_before:] == []
    assert {f["status"] for f in second.to_json()["files"]} == {"skipped"}
    assert [n.status for n in second.nodes] == ["unchanged"]
    assert second.comfyui is not None and second.comfyui.action == "adopted"
    assert second.comfyui.pid == first.comfyui.pid
    assert (root / "ComfyUI/.git/HEAD").stat().st_mtime_ns == head_before
    assert "pip" not in " ".join(
        line
        for line in (root / ".comfyfleet/provision.log").read_text().splitlines()
        if "| pip" in line
    )


async def test_a_changed_node_restarts_comfyui(world: DemoWorld, root: Path):
    manifest = load_manifest(world.manifest_path)
    first = await provision(manifest, root)
    assert first.ok, first.reason
    world.node.commit_files({"extra.py": "X = 1\n"}, message="update", tag="v1.1.0")
    world.manifest["nodes"][0]["ref"] = "v1.1.0"
    write_manifest(world.manifest_path, world.manifest)

    second = await provision(load_manifest(world.manifest_path), root)

    assert second.ok, second.reason
    assert [n.status for n in second.nodes] == ["installed"]
    assert second.comfyui is not None and second.comfyui.action == "restarted"
    assert second.comfyui.pid != first.comfyui.pid


async def test_failing_critical_node_fails_the_run_with_the_reason_everywhere(
    world: DemoWorld, root: Path, tmp_path: Path
):
    bad = make_node_repo(
        tmp_path / "more", "BrokenNode", ["BrokenThing"],
        requirements=offline_requirements(world.wheels, "package-that-does-not-exist==1.0"),
    )  # fmt: skip
    world.manifest["nodes"].append(
        {"repo": bad.url, "ref": bad.tag, "critical": True, "classes": ["BrokenThing"]}
    )
    write_manifest(world.manifest_path, world.manifest)

    report = await provision(load_manifest(world.manifest_path), root)

    assert not report.ok
    assert "critical node BrokenNode failed" in report.reason
    assert {n.name: n.status for n in report.nodes} == {
        "ComfyUI-DemoNode": "installed",
        "BrokenNode": "failed",
    }
    assert _last_line(root).startswith(f"{MARKER_FAILED}: critical node BrokenNode")
    assert "BrokenNode" in (root / ".provisioning_failed").read_text()
    errors = (root / ".comfyfleet/errors.log").read_text()
    assert "package-that-does-not-exist" in errors
    assert runtime.read_pid_file(root) is None  # ComfyUI was not started


async def test_failing_optional_node_warns_and_strict_mode_fails(
    world: DemoWorld, root: Path, tmp_path: Path
):
    bad = make_node_repo(
        tmp_path / "more", "OptionalBroken", ["OptionalThing"],
        requirements=offline_requirements(world.wheels, "package-that-does-not-exist==1.0"),
    )  # fmt: skip
    world.manifest["nodes"].append({"repo": bad.url, "ref": bad.tag, "classes": ["OptionalThing"]})
    write_manifest(world.manifest_path, world.manifest)
    manifest = load_manifest(world.manifest_path)

    report = await provision(manifest, root)
    assert report.ok, report.reason
    node = next(n for n in report.to_json()["nodes"] if n["repo"] == bad.url)
    assert node["status"] == "failed"  # never reported as success
    assert any(c.name == "node OptionalBroken" and c.status == "warn" for c in report.checks.checks)

    strict = await provision(manifest, root, strict=True)
    assert not strict.ok and "OptionalBroken" in strict.reason


async def test_node_that_wants_another_torch_fails_and_torch_stays(
    world: DemoWorld, root: Path, tmp_path: Path, venv_python: Path
):
    grabby = make_node_repo(
        tmp_path / "more", "TorchGrabber", ["Grab"],
        requirements=offline_requirements(world.wheels, "torch==2.0.0"),
    )  # fmt: skip
    world.manifest["nodes"].append({"repo": grabby.url, "ref": grabby.tag, "critical": True})
    write_manifest(world.manifest_path, world.manifest)

    report = await provision(load_manifest(world.manifest_path), root, start=False)

    assert not report.ok and "TorchGrabber" in report.reason
    constraints = (root / ".comfyfleet/constraints.txt").read_text()
    assert "torch==1.0.0" in constraints
    import subprocess

    version = subprocess.run(
        [str(venv_python), "-c", "import torch; print(torch.__version__)"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert version == "1.0.0"


async def test_workflow_needing_a_missing_model_fails_before_any_download(
    world: DemoWorld, root: Path, server: ModelServer
):
    workflow = world.workdir / "workflows" / "needs_more.json"
    url = "https://huggingface.co/x/y/resolve/main/wan2.1_t2v.safetensors"
    model = {"name": "wan2.1_t2v.safetensors", "directory": "diffusion_models", "url": url}
    node = {
        "id": 7,
        "type": "UNETLoader",
        "widgets_values": ["wan2.1_t2v.safetensors", "default"],
        "properties": {"models": [model]},
    }
    workflow.write_text(json.dumps({"nodes": [node]}))
    world.manifest["workflows"].append({"path": "workflows/needs_more.json"})
    write_manifest(world.manifest_path, world.manifest)
    before = len(server.requests)

    report = await provision(load_manifest(world.manifest_path), root)

    assert not report.ok
    assert (
        "needs_more.json: node 7 (UNETLoader) needs diffusion_models/wan2.1_t2v.safetensors"
        in report.reason
    )
    log = (root / ".comfyfleet/provision.log").read_text()
    assert 'url = "https://huggingface.co/x/y/resolve/main/wan2.1_t2v.safetensors"' in log
    assert len(server.requests) == before
    assert (root / ".provisioning_failed").exists()


async def test_cuda_missing_means_not_ready(world: DemoWorld, root: Path, monkeypatch):
    monkeypatch.setenv("STANDIN_DEVICES", "none")

    report = await provision(load_manifest(world.manifest_path), root)

    assert not report.ok
    assert "no CUDA device" in report.reason
    assert report.to_json()["comfyui"]["ready"] is False


async def test_cpu_mode_is_ready_without_cuda(world: DemoWorld, root: Path, monkeypatch):
    monkeypatch.setenv("STANDIN_DEVICES", "none")
    world.manifest["comfyui"]["args"] += ["--cpu"]
    write_manifest(world.manifest_path, world.manifest)

    report = await provision(load_manifest(world.manifest_path), root)

    assert report.ok, report.reason


async def test_no_start_installs_and_verifies_only(world: DemoWorld, root: Path):
    report = await provision(load_manifest(world.manifest_path), root, start=False)

    assert report.ok, report.reason
    assert report.comfyui is None and runtime.read_pid_file(root) is None
