"""What `import` emits, provisioned for real: a registry_id node cloned over HTTP from the
repository the registry names, and a model in a subfolder that ComfyUI lists as sub/name."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from comfyfleet import runtime
from comfyfleet.manifest import load_manifest
from comfyfleet.provisioning import provision
from comfyfleet.testing.demo_fixture import DemoWorld, write_manifest
from comfyfleet.testing.modelserver import ModelServer, make_safetensors
from comfyfleet.testing.registry import RegistryServer
from comfyfleet.testing.repos import make_node_repo
from comfyfleet.verification import verify


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[RegistryServer]:
    srv = RegistryServer()
    srv.start_in_thread()
    for name, value in srv.endpoint_env().items():
        monkeypatch.setenv(name, value)
    try:
        yield srv
    finally:
        srv.stop_thread()


async def test_registry_node_and_subfolder_model_provision_and_are_visible(
    world: DemoWorld, root: Path, registry: RegistryServer, server: ModelServer
):
    pack = make_node_repo(world.workdir / "repos", "ComfyUI-RegPack", ["RegPackNode"])
    repo_url = registry.host_repo("ComfyUI-RegPack", pack.bare)
    registry.add_node("comfyui-regpack", repo_url)
    world.manifest["nodes"].append(
        {"registry_id": "comfyui-regpack", "critical": True, "classes": ["RegPackNode"]}
    )
    url = server.add_file("demo/ace_style.safetensors", make_safetensors(4096, seed=7))
    world.manifest["models"].append(
        {"url": url, "folder": "loras", "subfolder": "ACE/v2", "filename": "ace_style.safetensors"}
    )
    write_manifest(world.manifest_path, world.manifest)
    manifest = load_manifest(world.manifest_path)

    report = await provision(manifest, root)

    assert report.ok, report.reason
    node = next(n for n in report.to_json()["nodes"] if n["repo"] == repo_url)
    assert node["status"] == "installed" and node["commit"] == pack.commit
    assert (root / "ComfyUI/custom_nodes/comfyui-regpack/__init__.py").is_file()
    assert (root / "ComfyUI/models/loras/ACE/v2/ace_style.safetensors").is_file()
    # ComfyUI lists the file as "<subfolder>/<filename>", and the run was ready on that name
    ready = await runtime.check_ready(
        "127.0.0.1",
        world.port,
        runtime.Expectations(
            models=[("loras", "ACE/v2/ace_style.safetensors")], classes=["RegPackNode"]
        ),
    )
    assert ready.ready, ready.problems
    checks = {c.name: c.status for c in (await verify(manifest, root)).checks}
    assert checks["model loras/ACE/v2/ace_style.safetensors"] == "ok"
    assert checks["node comfyui-regpack"] == "ok"
    asked = [p for p in registry.requests if p.startswith("/nodes/")]
    assert asked == ["/nodes/comfyui-regpack"]

    registry.fail_with = 503  # a second run on the ready root needs no registry
    again = await provision(load_manifest(world.manifest_path), root)
    assert again.ok, again.reason
    assert [p for p in registry.requests if p.startswith("/nodes/")] == asked
