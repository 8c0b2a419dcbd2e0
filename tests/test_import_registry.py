"""`registry_id` nodes: the Comfy Registry client against the loopback double, and `check`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from typer.testing import CliRunner

from comfyfleet.cli import _register, app
from comfyfleet.errors import NotFound, ServerError, Unreachable
from comfyfleet.install.registry import registry_repo, resolve_registry_id
from comfyfleet.testing.registry import RegistryServer

_register()


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


async def resolve(node_id: str):
    async with aiohttp.ClientSession() as session:
        return await resolve_registry_id(session, node_id)


async def test_a_registry_id_resolves_to_the_repository_of_its_record(registry):
    registry.add_node("comfyui-impact-pack", "https://github.com/ltdrdata/ComfyUI-Impact-Pack",
                      version="8.8.1")  # fmt: skip
    node = await resolve("comfyui-impact-pack")
    assert node.repository == "https://github.com/ltdrdata/ComfyUI-Impact-Pack"
    assert node.latest_version == "8.8.1"
    assert registry.requests == ["/nodes/comfyui-impact-pack"]  # asked where the env says


async def test_an_unknown_id_is_not_found(registry):
    with pytest.raises(NotFound, match="'nope' is not in the Comfy Registry"):
        await resolve("nope")


@pytest.mark.parametrize(
    "repository",
    [None, "", "file:///etc", "--upload-pack=touch /tmp/x", "https://h/x\nFATAL: y", "ssh://h/x"],
)
async def test_a_record_without_a_usable_repository_is_refused(registry, repository):
    registry.add_node("odd-pack", repository)
    with pytest.raises(NotFound, match="without a usable git repository"):
        await resolve("odd-pack")


async def test_a_failing_registry_is_unreachable_not_a_traceback(registry):
    registry.fail_with = 503
    with pytest.raises(ServerError, match="answered 503"):
        await resolve("comfyui-impact-pack")


async def test_a_registry_nobody_answers_is_unreachable(registry):
    registry.stop_thread()  # the port is closed now: connection refused
    with pytest.raises(Unreachable, match="could not be asked about 'x'"):
        await resolve("x")


async def test_provisioning_asks_the_registry_once_per_root(registry, tmp_path: Path):
    registry.add_node("comfyui-kjnodes", "https://github.com/kijai/ComfyUI-KJNodes")
    assert (
        await registry_repo("comfyui-kjnodes", tmp_path)
        == registry.nodes["comfyui-kjnodes"]["repository"]
    )
    registry.fail_with = 500  # the registry is gone: a re-run on this root does not need it
    assert (
        await registry_repo("comfyui-kjnodes", tmp_path)
        == "https://github.com/kijai/ComfyUI-KJNodes"
    )
    assert registry.requests == ["/nodes/comfyui-kjnodes"]


def check_json(tmp_path: Path, nodes: list[dict]) -> tuple[int, dict]:
    manifest = tmp_path / "manifest.toml"
    lines = ["version = 1"]
    for node in nodes:
        lines.append("[[nodes]]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in node.items()]
    manifest.write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(app, ["check", str(manifest), "--root", str(tmp_path), "--json"])
    return result.exit_code, json.loads(result.stdout)


def test_check_resolves_registry_ids_and_warns_they_are_unpinned(registry, tmp_path: Path):
    registry.add_node("comfyui-videohelpersuite",
                      "https://github.com/Kosinkadink/ComfyUI-VideoHelperSuite")  # fmt: skip
    code, doc = check_json(tmp_path, [{"registry_id": "comfyui-videohelpersuite"}])
    assert code == 0 and doc["ok"] is True
    assert doc["nodes"][0]["repo"] == "https://github.com/Kosinkadink/ComfyUI-VideoHelperSuite"
    assert doc["nodes"][0]["status"] == "unpinned"
    assert any("comfyui-videohelpersuite" in w or "VideoHelperSuite" in w for w in doc["warnings"])


def test_check_fails_on_a_critical_registry_id_that_does_not_resolve(registry, tmp_path: Path):
    code, doc = check_json(
        tmp_path,
        [{"registry_id": "gone-pack", "critical": True}, {"registry_id": "optional-gone"}],
    )
    assert code == 1 and doc["ok"] is False
    assert [n["status"] for n in doc["nodes"]] == ["unresolved", "unresolved"]
    assert doc["errors"] == [
        f"node gone-pack: registry id 'gone-pack' is not in the Comfy Registry "
        f'({registry.base_url}) — check the id, or give the node\'s repo = "<git URL>" instead'
    ]
    assert any(w.startswith("optional-gone:") for w in doc["warnings"])


def test_a_node_without_repo_or_registry_id_is_a_manifest_error(tmp_path: Path):
    manifest = tmp_path / "m.toml"
    manifest.write_text('version = 1\n[[nodes]]\nref = "v1"\n')
    result = CliRunner().invoke(app, ["check", str(manifest)])
    assert result.exit_code == 2
    assert "nodes[0]" in result.stderr and "registry_id" in result.stderr
