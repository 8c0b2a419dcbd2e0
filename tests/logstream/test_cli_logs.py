"""`comfyfleet logs follow` as a user runs it: a subprocess, killed -9 and run again."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

from follow_helpers import DONE, append, lines, read, until

CLI = [sys.executable, "-c", "from comfyfleet.cli import main; main()", "logs", "follow"]


def cli_args(sshd, remote: Path, out: Path, *extra: str) -> list[str]:
    return [
        *CLI,
        "--host", "127.0.0.1", "--port", str(sshd.port), "--user", sshd.user,
        "--key", str(sshd.client_key), "--known-hosts", str(sshd.known_hosts),
        "--path", str(remote), "--output", str(out), *extra,
    ]  # fmt: skip


async def test_killed_follower_resumes_exactly_once_from_its_checkpoint(sshd, remote_log, tmp_path):
    out = tmp_path / "local.log"
    body = lines(0, 4000)
    remote_log.write_bytes(b"")

    async def writer() -> None:
        for i in range(0, len(body), 400):  # 10 lines every 10 ms, torn anywhere
            append(remote_log, body[i : i + 400])
            await asyncio.sleep(0.01)

    writing = asyncio.create_task(writer())
    argv = cli_args(sshd, remote_log, out, "--json", "--timeout", "60s")
    for k in range(1, 4):
        proc = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.DEVNULL)
        await until(lambda k=k: len(read(out)) > k * len(body) // 5, 30, f"progress {k}")
        proc.send_signal(signal.SIGKILL)  # no chance to clean up or checkpoint
        await proc.wait()
    await writing
    append(remote_log, DONE)
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, stderr.decode()
    assert read(out) == body + DONE
    doc = json.loads(stdout)  # exactly one document and nothing else on stdout
    assert doc["outcome"] == "complete"
    assert doc["lines"] == 4001
    assert doc["bytes"] == len(body + DONE)
    assert doc["last_line"] == "PROVISIONING COMPLETE"
    assert set(doc) >= {"reconnects", "rotations", "truncations"}


def test_fail_marker_exits_1_and_custom_markers_add_to_defaults(sshd, remote_log, tmp_path):
    out = tmp_path / "local.log"
    remote_log.write_bytes(b"[12:00:01] step one\n  | FATAL: from pip, indented\n")
    append(remote_log, "[12:00:02] ❌ Deploy broke: no GPU\n".encode())
    run = subprocess.run(
        cli_args(sshd, remote_log, out, "--fail-marker", "Deploy broke", "--timeout", "20s"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1
    assert run.stdout == ""
    assert "Deploy broke: no GPU" in run.stderr
    assert "step one" in run.stderr  # the lines are shown on stderr as they arrive


def test_only_custom_markers_with_no_default_markers(sshd, remote_log, tmp_path):
    remote_log.write_bytes(b"PROVISIONING COMPLETE\nall good\n")
    run = subprocess.run(
        cli_args(
            sshd, remote_log, tmp_path / "o.log",
            "--no-default-markers", "--done-marker", "all good", "--json",
        ),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["last_line"] == "all good"


def test_deadline_exits_1_with_a_clear_message_and_json(sshd, remote_log, tmp_path):
    sshd.stop()
    run = subprocess.run(
        cli_args(sshd, remote_log, tmp_path / "o.log", "--timeout", "1s", "--json"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1
    assert json.loads(run.stdout)["outcome"] == "timeout"
    assert "no completion marker" in run.stderr and "within 1s" in run.stderr


def test_changed_host_key_exits_1_with_a_clear_message(sshd, remote_log, tmp_path):
    sshd.stop()
    sshd.regenerate_host_key()
    sshd.start()
    run = subprocess.run(
        cli_args(sshd, remote_log, tmp_path / "o.log", "--accept-new-host-key", "--json"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1
    assert "does not match" in run.stderr and str(sshd.known_hosts) in run.stderr
    assert "Traceback" not in run.stderr
    assert json.loads(run.stdout)["outcome"] == "failed"


def test_bad_timeout_is_a_usage_error(sshd, remote_log, tmp_path):
    run = subprocess.run(
        cli_args(sshd, remote_log, tmp_path / "o.log", "--timeout", "soon"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert "invalid duration" in run.stderr
