"""A disk filled by another process mid-run: the run still ends with one "disk full" verdict.

A real small filesystem (a tmpfs mounted by the test; CI runs as root) holds the root. The
model's ``.part`` is preallocated before the other process fills the disk, so the first
write to fail is a state file (``status.json``, ``events.jsonl``): the run must still end
with its marker, its sentinel and one JSON document.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from comfyfleet.events import MARKER_COMPLETE, MARKER_FAILED
from comfyfleet.testing.demo_fixture import DemoWorld, write_manifest
from comfyfleet.testing.modelserver import ModelServer, make_safetensors


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 32 MiB tmpfs, unmounted at teardown."""
    where = tmp_path / "disk"
    where.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(where)],
        check=True, capture_output=True,
    )  # fmt: skip
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True)


def test_a_disk_filled_mid_run_ends_with_a_disk_full_verdict(
    world: DemoWorld, small_disk: Path, server: ModelServer
):
    root = small_disk / "root"
    slow = server.add_file("slow.safetensors", make_safetensors(4 << 20), rate=256 * 1024)
    world.manifest["models"] = [{"url": slow, "folder": "checkpoints"}]
    world.manifest["workflows"] = []
    write_manifest(world.manifest_path, world.manifest)
    proc = subprocess.Popen(
        [sys.executable, "-c", "from comfyfleet.cli import main; main()",
         "provision", str(world.manifest_path), "--root", str(root), "--json", "--no-start"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    part = root / "ComfyUI/models/checkpoints/slow.safetensors.part"
    deadline = time.monotonic() + 60
    while not part.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert part.exists(), "the download never started"

    # Another process takes every free block (dd stops at ENOSPC).
    fill = subprocess.run(
        ["dd", "if=/dev/zero", f"of={small_disk / 'filler'}", "bs=64k"], capture_output=True
    )
    assert b"No space left on device" in fill.stderr
    out, err = proc.communicate(timeout=120)

    assert proc.returncode == 1, err
    assert "Traceback" not in err and "Exception Group" not in err, err
    doc = json.loads(out)
    assert doc["ok"] is False
    assert doc["error"].startswith("disk full: "), doc["error"]
    assert " free under " in doc["error"] and str(root) in doc["error"]
    assert "disk full: " in err
    lines = (root / ".comfyfleet/provision.log").read_text().splitlines()
    markers = [ln for ln in lines if ln.startswith((MARKER_COMPLETE, MARKER_FAILED))]
    assert markers == [lines[-1]] == [f"{MARKER_FAILED}: {doc['error']}"]
    assert doc["error"] in (root / ".provisioning_failed").read_text()
    assert not (root / ".provisioning").exists()
    assert not (root / "ComfyUI/models/checkpoints/slow.safetensors").exists()
    # The status the fleet reads says failed too (written from the reserve).
    assert json.loads((root / ".comfyfleet/status.json").read_text())["ok"] is False
