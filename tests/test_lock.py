"""The root lock (issue 8 item 5), with real concurrent processes: one run at a time per root,
released by the kernel on kill -9, refused runs change no file, --wait-lock, status, stop."""

from __future__ import annotations

import hashlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from comfyfleet.errors import RootLocked, RootUnusable
from comfyfleet.events import RunLog
from comfyfleet.lock import RootLock, holder, lock_path
from comfyfleet.testing.modelserver import ModelServer, make_safetensors

HOLD = """
import sys
from comfyfleet.lock import RootLock
lock = RootLock(sys.argv[1], "provision")
lock.acquire()
print("locked", flush=True)
sys.stdin.read()
"""


def _cli(*args: str, **kw) -> list[str]:
    return [sys.executable, "-c", "from comfyfleet.cli import main; main()", *args]


@pytest.fixture
def held(tmp_path: Path):
    """A separate process holding ROOT's lock until its stdin closes."""
    root = tmp_path / "root"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(root)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout.readline() == "locked\n"
    yield root, proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under root with its size, mtime and content hash."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        out[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns, digest)
    return out


def write_manifest(path: Path, url: str) -> Path:
    path.write_text(f'[[models]]\nurl = "{url}"\nfolder = "checkpoints"\n')
    return path


def wait_until(predicate, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_second_run_is_refused_naming_the_holder(held):
    root, proc = held
    with pytest.raises(RootLocked) as exc:
        RootLock(root, "download").acquire()
    assert f"another comfyfleet run (pid {proc.pid}" in str(exc.value)
    assert str(root) in str(exc.value) and exc.value.exit_code == 1
    who = holder(root)
    assert who is not None and (who.pid, who.command) == (proc.pid, "provision")
    assert who.since.endswith("Z")


def test_kill_9_releases_the_lock(held):
    root, proc = held
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert holder(root) is None
    lock = RootLock(root, "download")
    lock.acquire()  # at once: the kernel released it with the process
    assert holder(root).pid == os.getpid()
    lock.release()
    assert holder(root) is None


def test_the_lock_is_reentrant_within_one_process_and_not_inherited(tmp_path: Path):
    root = tmp_path / "root"
    outer = RootLock(root, "provision")
    outer.acquire()
    log = RunLog(root, "provision", sentinels=True)  # under the CLI's lock: no deadlock
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(sorted(os.listdir('/proc/self/fd')))"],
        capture_output=True, text=True, check=True, close_fds=False,
    )  # fmt: skip
    fds = json.loads(child.stdout.replace("'", '"'))
    lock_fd = next(
        fd for fd in os.listdir("/proc/self/fd")
        if os.path.realpath(f"/proc/self/fd/{fd}") == os.path.realpath(lock_path(root))
    )  # fmt: skip
    assert lock_fd not in fds  # close-on-exec, even with close_fds=False
    log.finish(True)
    assert holder(root).pid == os.getpid()  # the outer hold remains
    outer.release()
    assert holder(root) is None


def test_a_refused_run_log_changes_no_file(held):
    root, _ = held
    (root / ".comfyfleet").mkdir(exist_ok=True)
    (root / ".comfyfleet/provision.log").write_text("the running run's log\n")
    (root / ".provisioning").write_text("run-1\n")
    before = snapshot(root)
    with pytest.raises(RootLocked):
        RunLog(root, "provision", sentinels=True)
    assert snapshot(root) == before


def test_refused_commands_change_no_file_and_exit_1(held, tmp_path: Path, server):
    root, proc = held
    man = write_manifest(tmp_path / "m.toml", server.add_file("a.safetensors", b"x" * 64))
    (root / ".comfyfleet/provision.log").write_text("the running run's log\n")
    (root / ".provisioning").write_text("run-1\n")
    before = snapshot(root)
    for cmd in (["download", str(man)], ["provision", str(man)], ["start", str(man)]):
        r = subprocess.run(_cli(*cmd, "--root", str(root), "--json"), capture_output=True,
                           text=True, timeout=60)  # fmt: skip
        assert r.returncode == 1, (cmd, r.stderr)
        assert f"another comfyfleet run (pid {proc.pid}, provision since" in r.stderr
        assert json.loads(r.stdout)["ok"] is False and "Traceback" not in r.stderr
        assert snapshot(root) == before, cmd


def test_a_root_that_is_a_file_is_exit_2_and_creates_nothing(tmp_path: Path, server):
    root = tmp_path / "file"
    root.write_text("not a dir")
    man = write_manifest(tmp_path / "m.toml", server.add_file("a.safetensors", b"x" * 64))
    for cmd in (["download", str(man)], ["provision", str(man)], ["start", str(man)], ["stop"]):
        r = subprocess.run(_cli(*cmd, "--root", str(root)), capture_output=True, text=True,
                           timeout=60)  # fmt: skip
        assert r.returncode == 2, (cmd, r.stderr)
        assert "is not a directory" in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(RootUnusable):
        RootLock(root / "sub", "download").acquire()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "m.toml"]


def test_concurrent_downloads_one_runs_the_other_is_refused_and_stop_ends_the_first(
    tmp_path: Path, server: ModelServer
):
    # slow enough that the first run outlasts the other commands' start-up on a busy machine
    url = server.add_file("slow.safetensors", make_safetensors(8 << 20, 7), rate=128 * 1024)
    man = write_manifest(tmp_path / "m.toml", url)
    root = tmp_path / "root"
    first = subprocess.Popen(_cli("download", str(man), "--root", str(root)),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    part = root / "ComfyUI/models/checkpoints/slow.safetensors.part"
    try:
        wait_until(part.exists, "the first download to start")

        # a second run: refused at once, exit 1, naming the holder; it recorded nothing
        second = subprocess.run(_cli("download", str(man), "--root", str(root), "--json"),
                                capture_output=True, text=True, timeout=60)  # fmt: skip
        assert second.returncode == 1, second.stderr
        assert f"another comfyfleet run (pid {first.pid}, download since" in second.stderr
        assert json.loads(second.stdout)["ok"] is False
        runs = {json.loads(line)["run"] for line in (root / ".comfyfleet/events.jsonl").open()}
        assert len(runs) == 1

        # status is read-only and names the holder
        status = subprocess.run(_cli("status", "--root", str(root), "--json"),
                                capture_output=True, text=True, timeout=60)  # fmt: skip
        lock = json.loads(status.stdout)["lock"]
        assert lock["pid"] == first.pid and lock["command"] == "download" and lock["since"]

        # stop: SIGTERM to the holder, which ends cleanly (130), then ComfyUI (none here)
        stop = subprocess.run(_cli("stop", "--root", str(root), "--json"),
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert stop.returncode == 0, stop.stderr
        assert json.loads(stop.stdout)["run_stopped"]["pid"] == first.pid
        _, err = first.communicate(timeout=60)
        assert first.returncode == 130, err
        assert part.exists()  # interrupted cleanly: resumable
        assert holder(root) is None
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()


def test_wait_lock_waits_for_the_holder_then_runs(held, tmp_path: Path, server: ModelServer):
    root, proc = held
    data = make_safetensors(64 * 1024, 3)
    man = write_manifest(tmp_path / "m.toml", server.add_file("a.safetensors", data))
    cmd = _cli("download", str(man), "--root", str(root), "--wait-lock")
    waiter = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([waiter.stderr], [], [], 60)
        line = waiter.stderr.readline() if ready else ""
        assert f"waiting for another comfyfleet run (pid {proc.pid}, provision)" in line
        assert waiter.poll() is None
        assert not (root / "ComfyUI").exists()  # nothing touched while waiting
        proc.stdin.close()  # the holder ends
        _, err = waiter.communicate(timeout=120)
        assert waiter.returncode == 0, err
        assert (root / "ComfyUI/models/checkpoints/a.safetensors").read_bytes() == data
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait()


def test_sigterm_while_waiting_for_the_lock_exits_130(held, tmp_path: Path, server):
    root, _ = held
    man = write_manifest(tmp_path / "m.toml", server.add_file("a.safetensors", b"x" * 64))
    waiter = subprocess.Popen(_cli("provision", str(man), "--root", str(root), "--wait-lock",
                                   "--json"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)  # fmt: skip
    ready, _, _ = select.select([waiter.stderr], [], [], 60)
    assert ready and "waiting for another" in waiter.stderr.readline()
    waiter.send_signal(signal.SIGTERM)
    out, err = waiter.communicate(timeout=60)
    assert waiter.returncode == 130, err
    assert json.loads(out)["interrupted"] is True and "Traceback" not in err
