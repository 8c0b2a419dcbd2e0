"""Every provision run ends with one true verdict, whatever fails: the error boundary.

Each case injects a failure with real means (a git URL that does not exist, a requirement pip
cannot install offline, an install.py that exits 1, a stand-in ComfyUI that crashes, a path
that cannot be written) and runs the real CLI with ``--json``. The contract the fleet reads:
exactly one final marker, the failed sentinel, an errors.log entry, exit 1, no traceback on
stderr, and one JSON document on stdout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from comfyfleet.events import MARKER_COMPLETE, MARKER_FAILED
from comfyfleet.testing.demo_fixture import DemoWorld, write_manifest
from comfyfleet.testing.modelserver import ModelServer
from comfyfleet.testing.repos import make_node_repo, offline_requirements


@dataclass
class Case:
    """A failure to inject: ``arrange(world, root, tmp_path, server)``, what the verdict says."""

    arrange: Callable[[DemoWorld, Path, Path, ModelServer], None]
    reason: str
    internal: bool = False  # a bug-shaped failure: "internal error (...)" plus a traceback file


def _comfyui_at(world: DemoWorld, files: dict[str, str], tag: str) -> None:
    world.comfyui.commit_files(files, message=tag, tag=tag)
    world.manifest["comfyui"]["ref"] = tag


def _git(world, root, tmp_path, server):
    world.manifest["comfyui"]["repo"] = (tmp_path / "no-such-repo.git").as_uri()


def _pip_comfyui(world, root, tmp_path, server):
    # ComfyUI's own requirements run in a TaskGroup inside the install task: the failure
    # arrives as an ExceptionGroup nested in an ExceptionGroup.
    _comfyui_at(world, {"requirements.txt": "package-that-does-not-exist==1.0\n"}, "bad-reqs")


def _pip_node(world, root, tmp_path, server):
    bad = make_node_repo(
        tmp_path / "more", "PipBroken", ["PipThing"],
        requirements=offline_requirements(world.wheels, "package-that-does-not-exist==1.0"),
    )  # fmt: skip
    world.manifest["nodes"].append({"repo": bad.url, "ref": bad.tag, "critical": True})


def _install_py(world, root, tmp_path, server):
    bad = make_node_repo(
        tmp_path / "more", "InstallBroken", ["InstallThing"],
        install_py="import sys\nprint('install.py: no compiler found')\nsys.exit(1)\n",
    )  # fmt: skip
    world.manifest["nodes"].append({"repo": bad.url, "ref": bad.tag, "critical": True})


def _comfyui_crash(world, root, tmp_path, server):
    crash = "import sys\nprint('Traceback: cannot import torch')\nsys.exit(3)\n"
    _comfyui_at(world, {"main.py": crash}, "crashes")


def _verify(world, root, tmp_path, server):
    world.manifest["validate"]["require"] = {"checkpoints": 5}


def _workflow_check(world, root, tmp_path, server):
    (world.workdir / "workflows" / "demo_t2i.json").write_text("{ this is not json")


def _workflow_install(world, root, tmp_path, server):
    # ComfyUI/user is a file, so the workflows directory cannot be made: an OSError no
    # comfyfleet code expects, after downloads and installs ran.
    _comfyui_at(world, {"user": "a file where a directory must be\n"}, "user-is-a-file")


def _download(world, root, tmp_path, server):
    missing = f"{server.base_url}/files/missing/gone.safetensors"
    world.manifest["models"].append({"url": missing, "folder": "loras"})


def _status_file(world, root, tmp_path, server):
    blocker = root / ".comfyfleet" / "status.json"
    blocker.mkdir(parents=True)
    (blocker / "occupied").write_text("status.json cannot replace a non-empty directory\n")


def _install_state(world, root, tmp_path, server):
    blocker = root / ".comfyfleet" / "install_state.json"
    blocker.mkdir(parents=True)
    (blocker / "occupied").write_text("not a file\n")


CASES = {
    "git": Case(_git, "cannot fetch"),
    "pip-comfyui": Case(_pip_comfyui, "comfyui requirements: command failed"),
    "pip-node": Case(_pip_node, "critical node PipBroken failed to install"),
    "install.py": Case(_install_py, "critical node InstallBroken failed to install"),
    "comfyui-start": Case(_comfyui_crash, "ComfyUI exited with code 3 during startup"),
    "verify": Case(_verify, "verification failed"),
    "workflows-check": Case(_workflow_check, "workflow problem"),
    "workflows-install": Case(_workflow_install, "internal error (NotADirectoryError", True),
    "download": Case(_download, "required model(s) failed to download"),
    "status.json": Case(_status_file, "internal error (", True),
    "install_state.json": Case(_install_state, "internal error (IsADirectoryError", True),
}


def _provision_cli(manifest: Path, root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from comfyfleet.cli import main; main()",
         "provision", str(manifest), "--root", str(root), "--json"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "PIP_NO_INDEX": "1"},  # pip never goes online
    )  # fmt: skip


@pytest.mark.parametrize("name", list(CASES))
def test_every_failure_ends_with_one_verdict(
    name: str, world: DemoWorld, root: Path, tmp_path: Path, server: ModelServer
):
    case = CASES[name]
    case.arrange(world, root, tmp_path, server)
    write_manifest(world.manifest_path, world.manifest)

    done = _provision_cli(world.manifest_path, root)

    assert done.returncode == 1, done.stderr
    assert "Traceback (most recent call last)" not in done.stderr, done.stderr
    assert "Exception Group" not in done.stderr, done.stderr
    doc = json.loads(done.stdout)  # the whole of stdout is one document
    assert doc["ok"] is False
    assert case.reason in doc["error"], doc["error"]
    assert "\n" not in doc["error"]

    lines = (root / ".comfyfleet" / "provision.log").read_text().splitlines()
    markers = [ln for ln in lines if ln.startswith((MARKER_COMPLETE, MARKER_FAILED))]
    assert markers == [lines[-1]], markers
    assert lines[-1] == f"{MARKER_FAILED}: {doc['error']}"
    assert (root / ".provisioning_failed").exists()
    assert not (root / ".provisioning").exists()
    assert not (root / ".provisioning_complete").exists()
    errors = (root / ".comfyfleet" / "errors.log").read_text()
    assert f"provision: {case.reason}" in errors or case.reason in errors

    if case.internal:
        assert doc["error"].startswith("internal error ("), doc["error"]
        traceback_file = Path(doc["traceback_file"])
        assert traceback_file.parent == root.resolve() / ".comfyfleet"
        assert "Traceback (most recent call last)" in traceback_file.read_text()
        assert str(traceback_file) in errors
        assert str(traceback_file) in done.stderr
    else:
        assert "traceback_file" not in doc


def test_an_interrupted_provision_prints_one_interrupted_document(
    world: DemoWorld, root: Path, server: ModelServer
):
    import signal
    import time

    from comfyfleet.testing.modelserver import make_safetensors

    slow = server.add_file("slow.safetensors", make_safetensors(4 << 20), rate=256 * 1024)
    world.manifest["models"] = [{"url": slow, "folder": "checkpoints"}]
    world.manifest["workflows"] = []
    write_manifest(world.manifest_path, world.manifest)
    proc = subprocess.Popen(
        [sys.executable, "-c", "from comfyfleet.cli import main; main()",
         "provision", str(world.manifest_path), "--root", str(root), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    part = root / "ComfyUI/models/checkpoints/slow.safetensors.part"
    deadline = time.monotonic() + 60
    while not part.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert part.exists(), "the download never started"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)

    assert proc.returncode == 130, err
    doc = json.loads(out)
    assert doc["ok"] is False and doc["interrupted"] is True
    assert {"files", "bytes", "seconds", "nodes", "comfyui"} <= set(doc)
    lines = (root / ".comfyfleet" / "provision.log").read_text().splitlines()
    markers = [ln for ln in lines if ln.startswith((MARKER_COMPLETE, MARKER_FAILED))]
    assert markers == [lines[-1]] and lines[-1].startswith(f"{MARKER_FAILED}: interrupted")
