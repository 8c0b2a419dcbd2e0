"""The stand-in ComfyUI follows ComfyUI's documented API rules (the checks run against it)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from comfyfleet.testing.demo_fixture import free_port
from comfyfleet.testing.repos import make_comfyui_repo, make_repo, node_files


def _get(port: int, path: str) -> tuple[int, object]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


@pytest.fixture
def standin(tmp_path: Path):
    """Start the stand-in from a clone with models and nodes; yield (port, log path)."""
    repo = make_comfyui_repo(tmp_path / "repos")
    comfy = tmp_path / "ComfyUI"
    subprocess.run(["git", "clone", "-q", repo.url, str(comfy)], check=True)
    models = comfy / "models"
    for rel in (
        "checkpoints/a.safetensors",
        "checkpoints/sub/b.ckpt",
        "checkpoints/c.safetensors.part",
        "checkpoints/notes.txt",
        "unet/legacy.safetensors",
        "diffusion_models/new.sft",
        "ipadapter/ip.bin",
    ):
        (models / rel).parent.mkdir(parents=True, exist_ok=True)
        (models / rel).write_bytes(b"0")
    good = make_repo(
        tmp_path / "repos", "Good", node_files(["GoodNode"], extra_folders=["ipadapter"])
    )
    broken = make_repo(
        tmp_path / "repos", "Broken", node_files(["BrokenNode"], imports=["no_such_dep"])
    )
    for r, name in ((good, "Good"), (broken, "Broken")):
        subprocess.run(
            ["git", "clone", "-q", r.url, str(comfy / "custom_nodes" / name)], check=True
        )
    procs = []

    def start(*args: str, env: dict[str, str] | None = None) -> int:
        port = free_port()
        log = tmp_path / f"comfyui-{port}.log"
        proc = subprocess.Popen(
            [sys.executable, "main.py", "--port", str(port), *args],
            cwd=comfy,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            env=env,
        )
        procs.append((proc, log))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if _get(port, "/system_stats")[0] == 200:
                    return port
            except OSError:
                pass
            assert proc.poll() is None, log.read_text()
            time.sleep(0.05)
        raise AssertionError("stand-in did not start")

    start.logs = lambda: procs[-1][1].read_text()  # type: ignore[attr-defined]
    yield start
    for proc, _log in procs:
        proc.kill()
        proc.wait()


def test_models_listing_is_recursive_filtered_and_knows_legacy_folders(standin):
    port = standin()
    assert _get(port, "/models/checkpoints") == (200, ["a.safetensors", "sub/b.ckpt"])
    assert _get(port, "/models/diffusion_models") == (200, ["legacy.safetensors", "new.sft"])
    assert _get(port, "/models/unet")[0] == 404  # aliases are directories, not keys
    assert _get(port, "/models/no_such_folder")[0] == 404
    status, keys = _get(port, "/models")
    assert status == 200 and "ipadapter" in keys and "text_encoders" in keys
    assert _get(port, "/models/ipadapter") == (200, ["ip.bin"])  # registered by a custom node


def test_object_info_lists_loaded_classes_and_logs_import_failures(standin):
    port = standin()
    assert _get(port, "/object_info/NoSuchClass") == (200, {})
    status, info = _get(port, "/object_info/GoodNode")
    assert status == 200 and "GoodNode" in info
    assert _get(port, "/object_info/BrokenNode") == (200, {})
    _s, ckpt = _get(port, "/object_info/CheckpointLoaderSimple")
    assert ckpt["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == [
        "a.safetensors",
        "sub/b.ckpt",
    ]
    log = standin.logs()
    assert "(IMPORT FAILED)" in log and "Broken" in log and "no_such_dep" in log


def test_devices_follow_standin_devices_and_cpu_flag(standin):
    import os

    env = dict(os.environ)
    for which, expected in (("cuda", ["cuda"]), ("cpu", ["cpu"]), ("none", [])):
        port = standin(env={**env, "STANDIN_DEVICES": which})
        devices = _get(port, "/system_stats")[1]["devices"]
        assert [d["type"] for d in devices] == expected
    port = standin("--cpu", env={**env, "STANDIN_DEVICES": "cuda"})
    assert [d["type"] for d in _get(port, "/system_stats")[1]["devices"]] == ["cpu"]
