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


def test_sigterm_stops_provision_cleanly_with_a_failure_marker_and_exit_130(
    world: DemoWorld, root: Path, server
):
    import signal
    import time

    import tomli_w

    from comfyfleet.testing.modelserver import make_safetensors

    slow = server.add_file("slow.safetensors", make_safetensors(4 << 20), rate=256 * 1024)
    manifest = dict(world.manifest)
    manifest["models"] = [{"url": slow, "folder": "checkpoints"}]
    manifest["workflows"] = []
    path = world.manifest_path.with_name("slow.toml")
    path.write_text(tomli_w.dumps(manifest))
    proc = subprocess.Popen(
        [sys.executable, "-c", "from comfyfleet.cli import main; main()",
         "provision", str(path), "--root", str(root)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    part = root / "ComfyUI/models/checkpoints/slow.safetensors.part"
    deadline = time.monotonic() + 60
    while not part.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert part.exists(), "the download never started"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "SIGTERM" in err
    log_lines = (root / ".comfyfleet/provision.log").read_text().splitlines()
    assert log_lines[-1].startswith("PROVISIONING FAILED: interrupted")
    assert (root / ".provisioning_failed").exists() and not (root / ".provisioning").exists()
    assert not (root / "ComfyUI/models/checkpoints/slow.safetensors").exists()
    assert part.exists()  # resumable
