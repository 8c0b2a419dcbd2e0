"""Debian's Chromium driven by Playwright (no browser download: the system package)."""

from __future__ import annotations

import os
import shutil
from urllib.parse import urlsplit

CHROMIUM = os.environ.get("COMFYFLEET_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",  # CI runs as root
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: installed before any page script: records main-thread long tasks (ms)
LONGTASKS = """
window.__longtasks = [];
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) window.__longtasks.push(e.duration);
}).observe({type: "longtask", buffered: true});
"""


def launch(playwright):  # type: ignore[no-untyped-def]
    """The browser, as the tests and the screenshot script start it."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)


def loopback(url: str) -> bool:
    """True for URLs that stay on this machine (data: URLs never leave it)."""
    parts = urlsplit(url)
    if parts.scheme in ("data", "about", "blob"):
        return True
    return parts.hostname in ("127.0.0.1", "localhost", "::1")
