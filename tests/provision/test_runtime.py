"""start / stop / status against a real stand-in ComfyUI process."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from comfyfleet import runtime
from comfyfleet.errors import RuntimeFailure
from comfyfleet.testing.demo_fixture import free_port
from comfyfleet.testing.repos import make_comfyui_repo, make_node_repo


@pytest.fixture
def comfy(tmp_path: Path, root: Path) -> Path:
    """A checkout of the stand-in ComfyUI inside ``root``, with one custom node."""
    repo = make_comfyui_repo(tmp_path / "repos")
    dest = root / "ComfyUI"
    subprocess.run(["git", "clone", "-q", repo.url, str(dest)], check=True)
    node = make_node_repo(tmp_path / "repos", "NodeA", ["NodeAClass"])
    subprocess.run(["git", "clone", "-q", node.url, str(dest / "custom_nodes/NodeA")], check=True)
    (dest / "models/checkpoints/a.safetensors").write_bytes(b"x" * 16)
    return dest


async def _start(root: Path, comfy: Path, port: int, *args: str, **kw) -> runtime.RuntimeInfo:
    expect = kw.pop("expect", runtime.Expectations(models=[("checkpoints", "a.safetensors")],
                                                   classes=["NodeAClass"]))  # fmt: skip
    return await runtime.start(
        root=root, comfyui_dir=comfy, python=Path(sys.executable),
        args=["--listen", "127.0.0.1", "--port", str(port), *args],
        host="127.0.0.1", port=port, expect=expect, **kw,
    )  # fmt: skip


async def test_start_writes_pid_file_and_comfyui_outlives_nothing_but_stop(root: Path, comfy: Path):
    port = free_port()
    info = await _start(root, comfy, port)
    assert info.ready and info.action == "started"
    record = runtime.read_pid_file(root)
    assert record is not None and record.pid == info.pid and runtime.is_our_process(record)
    doc = await runtime.status(root)
    assert doc["running"] and doc["healthy"] and doc["port"] == port and doc["uptime_s"] >= 0

    again = await _start(root, comfy, port)
    assert again.action == "adopted" and again.pid == info.pid

    result = await runtime.stop(root)
    assert result["stopped"] and not runtime.pid_alive(info.pid)
    assert runtime.read_pid_file(root) is None
    assert (await runtime.status(root))["running"] is False
    assert (await runtime.stop(root))["stopped"] is False  # nothing running: still fine


async def test_missing_model_or_class_is_not_ready(root: Path, comfy: Path):
    expect = runtime.Expectations(
        models=[("checkpoints", "absent.safetensors"), ("ipadapter", "x.bin")],
        classes=["NoSuchClass"],
    )
    info = await _start(root, comfy, free_port(), expect=expect)
    assert not info.ready
    text = "\n".join(info.report.problems)
    assert "checkpoints/absent.safetensors" in text
    assert "'ipadapter'" in text
    assert "NoSuchClass" in text


async def test_crash_on_start_fails_fast_with_the_log_tail(root: Path, comfy: Path):
    (comfy / "main.py").write_text("import sys\nprint('FATAL: cannot import torch')\nsys.exit(3)\n")
    started = time.monotonic()
    with pytest.raises(RuntimeFailure) as err:
        await _start(root, comfy, free_port())
    assert time.monotonic() - started < 30
    assert "exited with code 3" in str(err.value) and "cannot import torch" in str(err.value)
    assert runtime.read_pid_file(root) is None


async def test_port_already_taken_is_a_clear_error(root: Path, comfy: Path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(RuntimeFailure, match=f"port {port} .* already in use"):
            await _start(root, comfy, port)


async def test_stale_pid_file_never_kills_an_unrelated_process(root: Path, comfy: Path):
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = runtime.PidRecord(
            pid=bystander.pid, host="127.0.0.1", port=free_port(), argv=["python", "main.py"],
            cwd=str(comfy), started_at=time.time(), start_ticks=1,
        )  # fmt: skip
        runtime.pid_path(root).parent.mkdir(parents=True, exist_ok=True)
        runtime.pid_path(root).write_text(stale.to_json())

        assert (await runtime.status(root))["running"] is False
        result = await runtime.stop(root)
        assert (result["stopped"], result["pid"], result["stale"]) == (False, bystander.pid, True)
        assert bystander.poll() is None

        runtime.pid_path(root).write_text(stale.to_json())
        info = await _start(root, comfy, free_port())  # start does not refuse
        assert info.ready and info.pid != bystander.pid
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


async def test_stop_kills_the_process_group_after_the_grace_period(root: Path, comfy: Path):
    (comfy / "custom_nodes/NodeA/__init__.py").write_text(
        "import signal, subprocess, sys\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "CHILD = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        "open('child.pid', 'w').write(str(CHILD.pid))\n"
        "class NodeAClass:\n    pass\n"
        "NODE_CLASS_MAPPINGS = {'NodeAClass': NodeAClass}\n"
    )
    info = await _start(root, comfy, free_port())
    assert info.ready
    child = int((comfy / "child.pid").read_text())

    result = await runtime.stop(root, grace=0.5)

    assert result["stopped"] and result["killed"]
    assert not runtime.pid_alive(info.pid) and not runtime.pid_alive(child)


async def test_cpu_args_need_no_cuda_device(root: Path, comfy: Path, monkeypatch):
    monkeypatch.setenv("STANDIN_DEVICES", "none")
    expect = runtime.Expectations(need_cuda=not runtime.wants_cpu(["--cpu"]))
    info = await _start(root, comfy, free_port(), "--cpu", expect=expect)
    assert info.ready
    assert [d["type"] for d in info.report.devices] == ["cpu"]
    record = json.loads(runtime.pid_path(root).read_text())
    assert record["cpu"] is True
