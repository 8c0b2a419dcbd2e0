#!/usr/bin/env python3
"""docs/dashboard.png: the dashboard of ``comfyfleet demo --pool``, in Debian's Chromium.

Runs the demo (a local pool of two instances on the demo world), signs in with the token it
prints, waits until both instances are ready and one is leased, opens one log panel and
saves a screenshot; then stops the demo with SIGINT (it cleans up after itself).

    python scripts/screenshot_dashboard.py [--out docs/dashboard.png] [--dark]
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from tests.fleet_web.browser import launch  # noqa: E402  the tests' browser, same flags


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "dashboard.png")
    ap.add_argument("--dark", action="store_true", help="dark colour scheme")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="comfyfleet-shot-") as tmp:
        demo = subprocess.Popen(
            [sys.executable, "-m", "comfyfleet", "demo", "--pool", "--root", tmp],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            url = token = ""
            assert demo.stdout is not None
            for line in demo.stdout:
                if line.startswith("dashboard: "):
                    url = line.split(" ", 1)[1].strip()
                elif line.startswith("token: "):
                    token = line.split(" ", 1)[1].strip()
                    break
            if not url or not token:
                print("the demo printed no dashboard URL and token", file=sys.stderr)
                return 1
            with sync_playwright() as p:
                browser = launch(p)
                page = browser.new_page(
                    viewport={"width": 1280, "height": 640},
                    color_scheme="dark" if args.dark else "light",
                )
                page.goto(url)
                page.fill("input[type=password]", token)
                page.click("button[type=submit]")
                page.wait_for_selector('tr[data-state="leased"]', timeout=600_000)
                page.wait_for_selector('tr[data-state="ready"]', timeout=600_000)
                page.locator("tr.panel summary").first.click()
                page.wait_for_timeout(500)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.out), full_page=True)
                browser.close()
            print(f"wrote {args.out}")
            return 0
        finally:
            demo.send_signal(signal.SIGINT)
            demo.wait(120)


if __name__ == "__main__":
    sys.exit(main())
