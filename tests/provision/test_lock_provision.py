"""The root lock around a whole provision run: ComfyUI never inherits it, and ``stop`` during a
run first ends that run cleanly (its marker, exit 130), then stops ComfyUI (issue 8 item 5)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import tomli_w

from comfyfleet import runtime
from comfyfleet.lock import holder, lock_path
from comfyfleet.testing.demo_fixture import DemoWorld
from comfyfleet.testing.modelserver import make_safetensors


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from comfyfleet.cli import main; main()", *args]


def test_comfyui_started_by_a_run_never_holds_the_lock(world: DemoWorld, root: Path):
    done = subprocess.run(_cli("provision", str(world.manifest_path), "--root", str(root)),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    record = runtime.read_pid_file(root)
    assert record is not None and runtime.is_our_process(record)
    target = os.path.realpath(lock_path(root))
    fds = os.listdir(f"/proc/{record.pid}/fd")
    assert fds and all(
        os.path.realpath(f"/proc/{record.pid}/fd/{fd}") != target for fd in fds
    )  # fmt: skip
    assert holder(root) is None  # the run ended; its ComfyUI keeps running without the lock
    again = subprocess.run(_cli("download", str(world.manifest_path), "--root", str(root)),
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stderr  # not refused


def test_stop_during_provision_ends_the_run_with_its_marker_then_stops_comfyui(
    world: DemoWorld, root: Path, server
):
    first = subprocess.run(_cli("provision", str(world.manifest_path), "--root", str(root)),
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert first.returncode == 0, first.stderr
    comfy = runtime.read_pid_file(root).pid

    slow = server.add_file("slow.safetensors", make_safetensors(4 << 20), rate=256 * 1024)
    manifest = dict(world.manifest)
    manifest["models"] = [*manifest["models"], {"url": slow, "folder": "checkpoints"}]
    manifest["workflows"] = []
    path = world.manifest_path.with_name("slow.toml")
    path.write_text(tomli_w.dumps(manifest))
    run = subprocess.Popen(_cli("provision", str(path), "--root", str(root)),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        part = root / "ComfyUI/models/checkpoints/slow.safetensors.part"
        deadline = time.monotonic() + 60
        while not part.exists() and time.monotonic() < deadline and run.poll() is None:
            time.sleep(0.05)
        assert part.exists(), "the download never started"
        assert holder(root).pid == run.pid

        stop = subprocess.run(_cli("stop", "--root", str(root)), capture_output=True, text=True,
                              timeout=120)  # fmt: skip

        assert stop.returncode == 0, stop.stderr
        assert (
            f"stopped the comfyfleet run holding {root} (pid {run.pid}, provision)" in stop.stderr
        )
        _, err = run.communicate(timeout=60)
        assert run.returncode == 130, err
        lines = (root / ".comfyfleet/provision.log").read_text().splitlines()
        assert lines[-1].startswith("PROVISIONING FAILED: interrupted")
        assert (root / ".provisioning_failed").exists() and not (root / ".provisioning").exists()
        assert not runtime.pid_alive(comfy) and runtime.read_pid_file(root) is None
    finally:
        if run.poll() is None:
            run.send_signal(signal.SIGKILL)
            run.wait()
