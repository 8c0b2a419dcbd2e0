"""`comfyfleet download` as a subprocess: exit codes, --json, kill -9 then resume, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from comfyfleet.testing.modelserver import ModelServer

from .conftest import blob, model_dir, sha

MB = 1_000_000


@pytest.fixture
def threaded_server():
    srv = ModelServer()
    srv.start_in_thread()
    yield srv
    srv.stop_thread()


def write_manifest(path: Path, models: list[dict], **download) -> Path:
    settings = {"stall_timeout": '"2s"', "min_speed": '"16KiB"', "segment_size": '"1MiB"',
                "connections_per_file": "2", **download}  # fmt: skip
    lines = ["[download]"] + [f"{k} = {v}" for k, v in settings.items()]
    for m in models:
        lines.append("[[models]]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in m.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from comfyfleet.cli import main; main()", "download", *args]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def sidecar_done(path: Path) -> int:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return 0
    return sum(e - s for s, e in doc["done"])


def test_json_document_and_exit_1_when_a_required_file_fails(threaded_server, tmp_path):
    data = blob(2 * MB, 1)
    good = threaded_server.add_file("good.safetensors", data)
    bad = f"{threaded_server.base_url}/files/missing.safetensors"
    man = write_manifest(tmp_path / "m.toml", [
        {"url": good, "folder": "checkpoints", "sha256": sha(data)},
        {"url": bad, "folder": "loras"},
    ])  # fmt: skip
    r = subprocess.run(cli(str(man), "--root", str(tmp_path / "root"), "--json"),
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)  # exactly one document on stdout
    assert doc["ok"] is False and isinstance(doc["seconds"], float)
    statuses = {f["filename"]: f["status"] for f in doc["files"]}
    assert statuses == {"good.safetensors": "verified", "missing.safetensors": "failed"}
    for f in doc["files"]:
        assert {"folder", "filename", "status", "bytes", "sha256", "error"} <= f.keys()
    assert "1 verified" in r.stderr and "1 failed" in r.stderr
    log = (tmp_path / "root" / ".comfyfleet" / "provision.log").read_text()
    assert "404" in log


def test_bad_manifest_exits_2(tmp_path):
    man = tmp_path / "m.toml"
    man.write_text('[[models]]\nurl = "http://x/y.safetensors"\nfolder = "checkpoint"\n')
    r = subprocess.run(cli(str(man), "--root", str(tmp_path / "root")), capture_output=True,
                       text=True, timeout=60)  # fmt: skip
    assert r.returncode == 2 and "did you mean 'checkpoints'" in r.stderr
    assert not (tmp_path / "root").exists()


def _start_slow_download(srv: ModelServer, tmp_path: Path, data: bytes):
    url = srv.add_file("big.safetensors", data, rate=512 * 1024)
    man = write_manifest(tmp_path / "m.toml",
                         [{"url": url, "folder": "checkpoints", "sha256": sha(data)}])  # fmt: skip
    root = tmp_path / "root"
    proc = subprocess.Popen(cli(str(man), "--root", str(root), "--json"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    side = model_dir(root) / "big.safetensors.part.json"
    wait_for(lambda: sidecar_done(side) >= 256 * 1024, 30, "some completed ranges")
    return proc, man, root, side


def test_kill_9_then_rerun_resumes_and_verifies(threaded_server, tmp_path):
    data = blob(6 * MB, 2)
    proc, man, root, side = _start_slow_download(threaded_server, tmp_path, data)
    proc.kill()  # SIGKILL: no cleanup at all
    proc.communicate(timeout=30)
    final = model_dir(root) / "big.safetensors"
    assert not final.exists()
    done = sidecar_done(side)
    assert 0 < done < len(data)

    threaded_server.plain["big.safetensors"].faults.rate = None
    before = len(threaded_server.requests)
    r = subprocess.run(cli(str(man), "--root", str(root), "--json"), capture_output=True,
                       text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["files"][0]["status"] == "verified" and doc["files"][0]["sha256"] == sha(data)
    assert doc["bytes"] <= len(data) - done  # only what was missing came over the network
    gets = [q for q in threaded_server.requests[before:] if q.method == "GET"]
    assert gets and all(q.range for q in gets)
    assert min(int(q.range.split("=")[1].split("-")[0]) for q in gets) > 0 or done < MB
    assert final.read_bytes() == data
    assert not side.exists() and not final.with_name("big.safetensors.part").exists()


def test_sigterm_stops_cleanly_with_exit_130(threaded_server, tmp_path):
    data = blob(6 * MB, 3)
    proc, _man, root, side = _start_slow_download(threaded_server, tmp_path, data)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert json.loads(out)["interrupted"] is True
    assert "resume" in err
    assert not (model_dir(root) / "big.safetensors").exists()
    assert sidecar_done(side) > 0
    log = (root / ".comfyfleet" / "provision.log").read_text()
    assert "interrupted" in log or os.path.exists(root / ".comfyfleet" / "events.jsonl")
