"""Stale and malformed PID records (issue 8 item 10): never trusted to signal anything; stop and
status then find ROOT's ComfyUI by its working directory and command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from comfyfleet import runtime
from comfyfleet.testing.demo_fixture import free_port
from comfyfleet.testing.repos import make_comfyui_repo


@pytest.fixture
def comfy(tmp_path: Path, root: Path) -> Path:
    repo = make_comfyui_repo(tmp_path / "repos")
    dest = root / "ComfyUI"
    subprocess.run(["git", "clone", "-q", repo.url, str(dest)], check=True)
    return dest


@pytest.fixture
def bystander(tmp_path: Path):
    """An unrelated ``python …/main.py`` elsewhere on the host (another user's ComfyUI)."""
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "main.py").write_text("import time\ntime.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "main.py"], cwd=other)
    yield proc
    proc.kill()
    proc.wait()


async def _start(root: Path, comfy: Path) -> runtime.RuntimeInfo:
    port = free_port()
    return await runtime.start(
        root=root, comfyui_dir=comfy, python=Path(sys.executable),
        args=["--listen", "127.0.0.1", "--port", str(port), "--cpu"], host="127.0.0.1",
        port=port, expect=runtime.Expectations(need_cuda=False),
    )  # fmt: skip


def _write(root: Path, text: str) -> None:
    runtime.pid_path(root).parent.mkdir(parents=True, exist_ok=True)
    runtime.pid_path(root).write_text(text)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from comfyfleet.cli import main; main()", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


async def test_a_record_without_start_ticks_never_kills_an_unrelated_main_py(
    root: Path, bystander: subprocess.Popen
):
    record = json.loads(
        runtime.PidRecord(
            pid=bystander.pid, host="127.0.0.1", port=free_port(),
            argv=[sys.executable, "main.py"], cwd=str(root / "ComfyUI"), started_at=time.time(),
        ).to_json()
    )  # fmt: skip
    del record["start_ticks"]
    _write(root, json.dumps(record))

    result = await runtime.stop(root)

    assert result["stopped"] is False and "lacks start_ticks" in result["problem"]
    assert bystander.poll() is None  # still running: nothing was signalled
    assert (await runtime.status(root))["running"] is False


async def test_a_record_naming_another_process_with_right_ticks_is_still_not_trusted(
    root: Path, bystander: subprocess.Popen
):
    ticks = runtime._proc_stat(bystander.pid)[1]
    record = runtime.PidRecord(
        pid=bystander.pid, host="127.0.0.1", port=free_port(), argv=[sys.executable, "main.py"],
        cwd=str(root / "ComfyUI"), started_at=time.time(), start_ticks=ticks,
    )  # fmt: skip
    assert not runtime.is_our_process(record)  # its cwd is not the recorded one
    _write(root, record.to_json())
    assert (await runtime.stop(root))["stopped"] is False
    assert bystander.poll() is None


@pytest.mark.parametrize(
    "text",
    ["", "garbage\n", "[]", "null", '{"pid": "12"}', '{"pid": 1}', '{"pid": true}',
     '{"pid": 123, "host": "h", "port": 99999, "argv": [], "cwd": "/", "started_at": 0,'
     ' "start_ticks": 1}', "\x00\xff" * 10, "[" * 5000],
)  # fmt: skip
async def test_a_malformed_record_while_comfyui_runs_is_found_by_its_working_directory(
    root: Path, comfy: Path, bystander: subprocess.Popen, text: str
):
    info = await _start(root, comfy)
    _write(root, text)

    doc = await runtime.status(root)
    assert doc["running"] and doc["healthy"] and doc["pid"] == info.pid
    assert doc["found_by"] == "cwd" and "not trusted" in doc["pid_file_problem"]

    result = await runtime.stop(root, grace=5)
    assert result["stopped"] and result["pid"] == info.pid and result["found_by"] == "cwd"
    assert not runtime.pid_alive(info.pid)
    assert bystander.poll() is None  # the other main.py is not under ROOT
    assert not runtime.pid_path(root).exists()


def test_the_cli_gives_one_clear_line_for_a_garbage_record(root: Path, comfy: Path):
    _write(root, "{not json")
    status = _cli("status", "--root", str(root), "--json")
    assert status.returncode == 1 and "Traceback" not in status.stderr
    assert "is not JSON: not trusted" in json.loads(status.stdout)["pid_file_problem"]
    stop = _cli("stop", "--root", str(root))
    assert stop.returncode == 0 and "Traceback" not in stop.stderr
    assert "comfyui.pid is not JSON: not trusted" in stop.stderr
    assert "nothing running" in stop.stderr


async def test_start_replaces_a_comfyui_it_cannot_trust(root: Path, comfy: Path):
    first = await _start(root, comfy)
    _write(root, "garbage")
    second = await _start(root, comfy)
    assert second.ready and second.pid != first.pid and second.action == "restarted"
    assert not runtime.pid_alive(first.pid)
    assert runtime.read_pid_file(root).pid == second.pid
    assert os.path.realpath(f"/proc/{second.pid}/cwd") == os.path.realpath(comfy)
