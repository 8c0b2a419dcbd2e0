"""Progress rendering from RunLog events: plain lines off a TTY, rich bars on one."""

from __future__ import annotations

import io
import time

from comfyfleet.events import RunLog
from comfyfleet.progress import PlainRenderer, ProgressRenderer, RichRenderer


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
    out = io.StringIO()
    log = RunLog(tmp_path, "download")
    auto = ProgressRenderer.start(log, stream=io.StringIO())
    assert isinstance(auto, PlainRenderer)
    auto.stop()
    r = PlainRenderer(out, every=0.05)
    log.subscribe(r.on_event)
    r.begin()
    _feed(log)
    deadline = time.monotonic() + 5
    while "files" not in out.getvalue() and time.monotonic() < deadline:
        time.sleep(0.02)
    r.stop()
    log.close()
    text = out.getvalue()
    assert "verified checkpoints/a.safetensors" in text
    assert "1/1 files" in text


def test_rich_bars_on_a_tty(tmp_path):
    out = FakeTTY()
    log = RunLog(tmp_path, "download")
    r = ProgressRenderer.start(log, stream=out)
    assert isinstance(r, RichRenderer)
    _feed(log)
    r.stop()
    log.close()
    assert "verified checkpoints/a.safetensors" in out.getvalue()
    assert r.totals() == (1000, 1000)


def test_disabled_renders_nothing(tmp_path):
    log = RunLog(tmp_path, "download")
    r = ProgressRenderer.start(log, enabled=False, stream=FakeTTY())
    _feed(log)
    r.stop()
    log.close()
    assert type(r) is ProgressRenderer
