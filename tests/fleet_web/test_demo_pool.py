"""``comfyfleet demo --pool``: starts, serves the page, leases, and stops clean on SIGINT."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
from playwright.sync_api import expect
from tests.fleet_web.browser import loopback

DEADLINE = 300  # s: two offline provisions on a shared 2-core machine


def _wait_for(path: Path, text: str, proc: subprocess.Popen[str]) -> str:
    end = time.monotonic() + DEADLINE
    while time.monotonic() < end:
        content = path.read_text()
        if text in content:
            return content
        assert proc.poll() is None, f"demo --pool ended early:\n{content[-3000:]}"
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not seen within {DEADLINE}s:\n{path.read_text()[-3000:]}")


def test_demo_pool_serves_leases_and_stops_clean(tmp_path: Path, browser: Any) -> None:
    root = tmp_path / "demo"
    err = tmp_path / "stderr.txt"
    with err.open("w") as err_fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "comfyfleet", "demo", "--pool", "--root", str(root)],
            stdout=subprocess.PIPE, stderr=err_fh, stdin=subprocess.DEVNULL, text=True,
        )  # fmt: skip
    try:
        assert proc.stdout is not None
        dashboard = proc.stdout.readline().rstrip("\n")
        token_line = proc.stdout.readline().rstrip("\n")
        assert dashboard.startswith("dashboard: http://127.0.0.1:") and dashboard.endswith("/")
        assert token_line.startswith("token: ") and len(token_line) > len("token: ") + 16
        url, token = dashboard.split(" ", 1)[1], token_line.split(" ", 1)[1]
        with urllib.request.urlopen(url, timeout=10) as resp:
            assert 'type="password"' in resp.read().decode()  # the page answers: its login
        log = _wait_for(err, "==> up:", proc)
        assert "ComfyUI (stand-in" in log and "answers at http://127.0.0.1:" in log
        req = urllib.request.Request(
            url + "v1/instances", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            states = sorted(i["state"] for i in json.load(resp)["instances"])
        assert "leased" in states and len(states) == 2
        _check_page(browser, url, token, tmp_path)
        # what it started: pool serve and everything under it, and the slots' ComfyUIs
        started = {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
        for pidfile in (root / "pool" / "slots").glob("*/root/.comfyfleet/comfyui.pid"):
            started.add(int(json.loads(pidfile.read_text())["pid"]))
        assert len(started) >= 3  # pool serve + two ComfyUIs at least
        proc.send_signal(signal.SIGINT)
        assert proc.wait(120) == 0, err.read_text()[-3000:]
        assert proc.stdout.read() == ""  # nothing but the two lines on stdout
        left = [pid for pid in started if _alive(pid)]
        assert not left, f"processes left behind: {left}"
        assert not list((root / "pool" / "slots").glob("*/claim"))  # the slots are free
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _check_page(browser: Any, url: str, token: str, tmp_path: Path) -> None:
    """The real pool serve's page on the local provider: both instances, one leased, and
    each log panel fed with its provision's log (the local provider included)."""
    context = browser.new_context()
    page = context.new_page()
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    try:
        page.goto(url)
        page.fill("input[type=password]", token)
        page.click("button[type=submit]")
        expect(page.locator("tr[data-instance-id]")).to_have_count(2)
        expect(page.locator('tr[data-state="leased"]')).to_have_count(1)
        for panel in page.locator("[data-log-for]").all():
            expect(panel).to_contain_text("PROVISIONING COMPLETE", timeout=15_000)
        assert all(loopback(u) for u in requests), requests
    except BaseException:
        page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
        raise
    finally:
        context.close()
