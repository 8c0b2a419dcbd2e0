"""Progress is the CLI's: an event subscriber that renders on its own thread, never the loop."""

from __future__ import annotations

import ast
import asyncio
import io
import sys
import threading
from pathlib import Path

import comfyfleet
from comfyfleet.cli.provision import render_event
from comfyfleet.events import RunLog
from comfyfleet.progress import (
    EventConsole,
    PlainRenderer,
    ProgressRenderer,
    RichRenderer,
    event_console,
    renderer_for,
)

from .conftest import blob, manifest, run

SRC = Path(comfyfleet.__file__).parent


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def _feed(log: RunLog) -> None:
    f = {"folder": "checkpoints", "filename": "a.safetensors"}
    log.emit("file_queued", **f, bytes=0, total=1000)
    log.emit("file_started", **f, bytes=0, total=1000)
    log.emit("file_progress", **f, bytes=500, total=1000)
    log.emit("file_verified", **f, bytes=1000, total=1000, downloaded=1000)


def test_plain_lines_when_not_a_tty(tmp_path):
    assert isinstance(renderer_for(io.StringIO()), PlainRenderer)
    out = io.StringIO()
    log = RunLog(tmp_path, "download")
    console = EventConsole([], PlainRenderer(out, every=0.0))
    log.subscribe(console.on_event)
    console.start()
    _feed(log)
    console.stop()
    log.close()
    text = out.getvalue()
    assert "verified checkpoints/a.safetensors" in text
    assert "1/1 files" in text


def test_rich_bars_on_a_tty(tmp_path):
    out = FakeTTY()
    log = RunLog(tmp_path, "download")
    with event_console(stream=out) as console:
        log.subscribe(console.on_event)
        _feed(log)
    log.close()
    assert isinstance(console.renderer, RichRenderer)
    assert "verified checkpoints/a.safetensors" in out.getvalue()
    assert console.renderer.totals() == (1000, 1000)


def test_disabled_renders_nothing(tmp_path):
    out = FakeTTY()
    log = RunLog(tmp_path, "download")
    with event_console(progress=False, stream=out) as console:
        log.subscribe(console.on_event)
        _feed(log)
    log.close()
    assert type(console.renderer) is ProgressRenderer and out.getvalue() == ""


async def test_a_blocked_terminal_never_blocks_the_event_loop(tmp_path, monkeypatch):
    release = threading.Event()
    forced: list[bool] = []

    class StuckTerminal(io.StringIO):
        """stderr of a process whose reader stopped reading: every write blocks."""

        def write(self, s: str) -> int:
            release.wait()
            return super().write(s)

    out = StuckTerminal()
    monkeypatch.setattr(sys, "stderr", out)  # render_event prints there
    deadline = threading.Timer(20, lambda: (forced.append(True), release.set()))
    deadline.start()
    log = RunLog(tmp_path, "provision")
    try:
        with event_console(render_event, stream=out) as console:
            log.subscribe(console.on_event)
            for i in range(200):
                log.emit("phase_started", phase=f"phase{i}")
                _feed(log)
                await asyncio.sleep(0)
            # The loop got here with the terminal stuck: no listener wrote on it.
            assert not forced, "event printing blocked the event loop"
            release.set()
    finally:
        deadline.cancel()
        log.close()
    text = out.getvalue()
    assert "==> phase199" in text and "verified checkpoints/a.safetensors" in text


def test_the_download_library_renders_nothing_and_never_imports_rich():
    for path in [*sorted((SRC / "download").glob("*.py")), SRC / "provisioning.py"]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                assert not name.startswith(("rich", "comfyfleet.progress")), (path, name)


async def test_download_all_writes_nothing_to_the_terminal(server, tmp_path, capfd):
    url = server.add_file("quiet.safetensors", blob(1_000_000, 50))
    report = await run(manifest([{"url": url, "folder": "checkpoints"}]), tmp_path)
    assert report.ok
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_console_stop_renders_what_was_queued(tmp_path):
    seen: list[str] = []
    console = EventConsole([lambda ev: seen.append(ev["event"])])
    console.start()
    for _ in range(100):
        console.on_event({"event": "phase_started", "phase": "x"})
    console.stop()
    assert seen == ["phase_started"] * 100
