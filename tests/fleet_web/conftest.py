"""Fixtures: the served dashboard (:mod:`.world`) and a Chromium page signed in to it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, sync_playwright
from tests.fleet_web.browser import LONGTASKS, launch, loopback
from tests.fleet_web.world import World


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Any:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    try:
        yield w
    finally:
        w.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    # Module scope, not session: sync Playwright runs an event loop in this thread while it is
    # open, so a session-wide browser made every later asyncio test fail with "Runner.run()
    # cannot be called from a running event loop".
    with sync_playwright() as p:
        b = launch(p)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(
    browser: Any, world: World, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Page]:
    """A fresh page that records every request it makes; a failed test leaves a screenshot
    (``failure.png`` in its tmp folder), and every test checks no request left loopback."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    pg = context.new_page()
    pg.add_init_script(LONGTASKS)
    pg.requests = []  # type: ignore[attr-defined]
    pg.on("request", lambda r: pg.requests.append(r.url))  # type: ignore[attr-defined]
    try:
        yield pg
        outside = [u for u in pg.requests if not loopback(u)]  # type: ignore[attr-defined]
        assert not outside, f"the page made requests off this machine: {outside}"
    finally:
        rep = getattr(request.node, "rep_call", None)
        if rep is None or rep.failed:
            pg.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
        context.close()


def sign_in(page: Page, world: World, token: str | None = None) -> None:
    """Open the dashboard and sign in with ``token`` (the right one by default)."""
    page.goto(world.url)
    page.fill("input[type=password]", token if token is not None else world.token)
    page.click("button[type=submit]")
    page.wait_for_load_state()
