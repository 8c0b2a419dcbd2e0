"""The shell every command runs in: signals, the last-resort handler, one JSON document.

Real subprocesses and real signals; the "silent server" is a raw socket that accepts and
never answers, so ``check`` is mid-request when the signal lands.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from comfyfleet.tracebacks import save_traceback

CLI = [sys.executable, "-c", "from comfyfleet.cli import main; main()"]


class SilentServer:
    """Accepts TCP connections on loopback and never sends a byte; ``accepted`` is set on one."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = threading.Event()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            self.accepted.set()

    def close(self) -> None:
        for c in self.conns:
            c.close()
        self.sock.close()


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


def _manifest(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "m.toml"
    path.write_text(f'version = 1\n[[models]]\nurl = "{url}"\nfolder = "checkpoints"\n')
    return path


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupted_check_exits_130_with_one_json_document(
    sig: signal.Signals, silent: SilentServer, tmp_path: Path
):
    manifest = _manifest(tmp_path, f"http://127.0.0.1:{silent.port}/files/a.safetensors")
    proc = subprocess.Popen(
        [*CLI, "check", str(manifest), "--root", str(tmp_path), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert silent.accepted.wait(30), "check never connected"
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert f"interrupted: stopped by {sig.name}" in err
    assert "Traceback" not in err
    doc = json.loads(out)
    assert doc["ok"] is False and doc["interrupted"] is True
    assert doc["entries"] == [] and "disk" in doc


def test_a_crash_in_a_command_with_a_root_is_one_line_exit_1_and_a_traceback_file(
    tmp_path: Path,
):
    root = tmp_path / "root"
    blocker = root / ".comfyfleet" / "status.json"  # a directory: status.json cannot be replaced
    blocker.mkdir(parents=True)
    (blocker / "x").write_text("")
    manifest = _manifest(tmp_path, "http://127.0.0.1:9/files/a.safetensors")

    done = subprocess.run(
        [*CLI, "download", str(manifest), "--root", str(root), "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip

    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    doc = json.loads(done.stdout)
    assert doc["ok"] is False
    assert doc["error"].startswith("internal error (IsADirectoryError: ")
    path = Path(doc["traceback_file"])
    assert path.parent == root / ".comfyfleet"
    assert "Traceback (most recent call last)" in path.read_text()
    assert f"the traceback is in {path}" in done.stderr


_CRASHING_COMMAND = """
import typer
from comfyfleet.cli.app import run

app = typer.Typer()

@app.command()
def crash(json_out: bool = typer.Option(False, "--json")) -> None:
    def body() -> int:
        raise KeyError("token hf_abcdefghijklmnopqrstu in a bug's message")

    run(body, json_doc={"files": []} if json_out else None)

app()
"""


@pytest.mark.parametrize("json_out", [True, False])
def test_a_bug_in_a_command_without_a_root_leaves_its_traceback_in_the_temp_dir(json_out: bool):
    argv = [sys.executable, "-c", _CRASHING_COMMAND, *(["--json"] if json_out else [])]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)

    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "hf_abcdef" not in done.stderr
    assert done.stderr.startswith("error: internal error (KeyError: ")
    path = Path(done.stderr.rsplit("the traceback is in ", 1)[1].strip())
    try:
        assert path.parent == Path(tempfile.gettempdir())
        text = path.read_text()
        assert "Traceback (most recent call last)" in text and "hf_***" in text
        assert "hf_abcdef" not in text  # redacted like every other output
        if json_out:
            doc = json.loads(done.stdout)
            assert doc == {
                "files": [], "ok": False, "error": doc["error"], "traceback_file": str(path),
            }  # fmt: skip
            assert doc["error"].startswith("internal error (KeyError: ")
        else:
            assert done.stdout == ""
    finally:
        path.unlink()


def test_a_traceback_file_is_redacted_and_falls_back_to_the_temp_dir(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("CIVITAI_TOKEN", "civitai-secret-value")
    try:
        raise ValueError("GET https://civitai.com/x?token=civitai-secret-value failed")
    except ValueError as exc:
        error = exc
    unwritable = tmp_path / "a-file"
    unwritable.write_text("")

    kept = save_traceback(error, tmp_path / "state")
    fallback = save_traceback(error, unwritable / "state")  # cannot be a directory

    assert kept is not None and kept.parent == tmp_path / "state"
    assert fallback is not None and fallback.parent == Path(tempfile.gettempdir())
    try:
        for path in (kept, fallback):
            text = path.read_text()
            assert "civitai-secret-value" not in text and "ValueError" in text
            assert os.stat(path).st_mode & 0o077 == 0  # not readable by others
    finally:
        fallback.unlink()
