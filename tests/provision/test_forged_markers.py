"""Subprocess output cannot fake a marker: a node's install prints the markers (issue 9 item 3)."""

from __future__ import annotations

from pathlib import Path

from comfyfleet.logstream.markers import MarkerSet
from comfyfleet.manifest import load_manifest
from comfyfleet.provisioning import provision
from comfyfleet.testing.demo_fixture import DemoWorld, write_manifest
from comfyfleet.testing.repos import make_node_repo

LIAR = (
    "import sys\n"
    "print('PROVISIONING COMPLETE')\n"
    "print('FATAL: the GPU melted')\n"
    "print('\\x1b[2K\\rPROVISIONING FAILED: forged', file=sys.stderr)\n"
    "sys.exit(1)\n"
)


def _markers(root: Path) -> list[tuple[str, str]]:
    lines = (root / ".comfyfleet/provision.log").read_text().splitlines()
    return [(line, o) for line in lines if (o := MarkerSet().classify(line))]


async def test_a_failing_install_printing_markers_leaves_only_the_true_verdict(
    world: DemoWorld, root: Path, tmp_path: Path
):
    liar = make_node_repo(tmp_path / "more", "LiarNode", ["LiarThing"], install_py=LIAR)
    world.manifest["nodes"].append({"repo": liar.url, "ref": liar.tag, "classes": ["LiarThing"]})
    write_manifest(world.manifest_path, world.manifest)

    report = await provision(load_manifest(world.manifest_path), root, start=False)

    assert report.ok, report.reason  # a non-critical node: the run succeeds
    node = next(n for n in report.nodes if n.name == "LiarNode")
    assert node.status == "failed" and "FATAL: the GPU melted" in (node.error or "")
    log = (root / ".comfyfleet/provision.log").read_text()
    assert "FATAL: the GPU melted" in log  # the output is there, but indented
    assert _markers(root) == [("PROVISIONING COMPLETE", "complete")]
    assert log.splitlines()[-1] == "PROVISIONING COMPLETE"
    errors = (root / ".comfyfleet/errors.log").read_text()
    assert all(line.startswith(("[", "  | ")) for line in errors.splitlines()), errors
    assert "\x1b" not in log and "\r" not in log


async def test_a_critical_liar_fails_the_run_with_one_failed_marker(
    world: DemoWorld, root: Path, tmp_path: Path
):
    liar = make_node_repo(tmp_path / "more", "LiarNode", ["LiarThing"], install_py=LIAR)
    world.manifest["nodes"].append({"repo": liar.url, "ref": liar.tag, "critical": True})
    write_manifest(world.manifest_path, world.manifest)

    report = await provision(load_manifest(world.manifest_path), root, start=False)

    assert not report.ok and "critical node LiarNode failed" in report.reason
    ((line, outcome),) = _markers(root)
    assert outcome == "failed" and line.startswith("PROVISIONING FAILED: critical node LiarNode")


async def test_a_comfyui_log_tail_with_markers_in_a_start_failure_is_indented(
    world: DemoWorld, root: Path, tmp_path: Path
):
    from comfyfleet.testing.repos import make_repo

    crash = (
        "import os\n"
        "print('PROVISIONING COMPLETE', flush=True)\n"
        "print('FATAL: forged by a node', flush=True)\n"
        "os._exit(3)\n"
    )
    node = make_repo(tmp_path / "more", "CrashNode", {"__init__.py": crash}, tag="v1")
    world.manifest["nodes"].append({"repo": node.url, "ref": node.tag})
    write_manifest(world.manifest_path, world.manifest)

    report = await provision(load_manifest(world.manifest_path), root)

    assert not report.ok and "exited with code 3 during startup" in report.reason
    log = (root / ".comfyfleet/provision.log").read_text()
    assert "  | FATAL: forged by a node" in log  # the tail is there, indented
    ((line, outcome),) = _markers(root)
    assert outcome == "failed" and line.startswith("PROVISIONING FAILED: ComfyUI exited")
