"""The CLI as users and scripts call it: exit codes, one JSON document, demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from comfyfleet.testing.demo_fixture import DemoWorld


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from comfyfleet.cli import main; main()", *args],
        capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_provision_json_verify_status_stop(world: DemoWorld, root: Path):
    done = _cli("provision", str(world.manifest_path), "--root", str(root), "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["ok"] and doc["comfyui"]["ready"] and doc["nodes"][0]["status"] == "installed"
    assert {"files", "bytes", "seconds", "phases"} <= set(doc)

    verify = _cli("verify", str(world.manifest_path), "--root", str(root), "--json")
    assert verify.returncode == 0, verify.stdout
    assert {c["status"] for c in json.loads(verify.stdout)["checks"]} == {"ok"}

    status = _cli("status", "--root", str(root), "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["healthy"] is True

    stop = _cli("stop", "--root", str(root), "--json")
    assert stop.returncode == 0 and json.loads(stop.stdout)["stopped"] is True
    assert _cli("status", "--root", str(root)).returncode == 1
    assert _cli("stop", "--root", str(root)).returncode == 0


def test_provision_failure_exits_1_and_verify_fails_on_missing_models(world: DemoWorld, root: Path):
    env = {"STANDIN_DEVICES": "none"}
    done = _cli("provision", str(world.manifest_path), "--root", str(root), "--json", env=env)
    assert done.returncode == 1
    assert json.loads(done.stdout)["ok"] is False
    assert "no CUDA device" in (root / ".provisioning_failed").read_text()

    empty = root.parent / "empty"
    verify = _cli("verify", str(world.manifest_path), "--root", str(empty))
    assert verify.returncode == 1 and "FAIL" in verify.stdout


def test_demo_runs_to_a_ready_comfyui_and_says_how_to_stop_it(tmp_path: Path):
    root = tmp_path / "demo"
    try:
        done = _cli("demo", "--root", str(root))
        assert done.returncode == 0, done.stderr
        assert "PROVISIONING COMPLETE" in done.stderr
        assert f"comfyfleet stop --root {root}" in done.stderr
        assert _cli("status", "--root", str(root)).returncode == 0
    finally:
        _cli("stop", "--root", str(root))
