"""`logs follow` stopped by a signal: exit 130 (never 143) and, with --json, one document."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from follow_helpers import read

CLI = [sys.executable, "-c", "from comfyfleet.cli import main; main()", "logs", "follow"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signalled_follow_exits_130_with_an_interrupted_document(sshd, remote_log, tmp_path, sig):
    out = tmp_path / "local.log"
    remote_log.write_bytes(b"[12:00:00] phase: download\n")  # no marker: the follow waits
    argv = [
        *CLI,
        "--host", "127.0.0.1", "--port", str(sshd.port), "--user", sshd.user,
        "--key", str(sshd.client_key), "--known-hosts", str(sshd.known_hosts),
        "--path", str(remote_log), "--output", str(out), "--timeout", "60s", "--json",
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not read(out) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        assert read(out) == remote_log.read_bytes(), "the first line never arrived"
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()

    assert proc.returncode == 130, stderr
    assert f"interrupted: stopped by {sig.name}" in stderr
    assert "Traceback" not in stderr
    doc = json.loads(stdout)
    assert doc["ok"] is False and doc["interrupted"] is True
    # not "failed": the remote run's fate is unknown, and a fleet must not destroy it for this
    assert doc["outcome"] == "interrupted"
    assert {"lines", "bytes", "reconnects", "rotations", "truncations", "last_line"} <= set(doc)
    assert read(out) == remote_log.read_bytes()  # what arrived is kept for the resume
