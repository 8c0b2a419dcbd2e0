"""200 instances and 20 updates a second: the page's main thread stays responsive."""

from __future__ import annotations

import asyncio

from playwright.sync_api import Page, expect
from tests.fleet_web.conftest import sign_in
from tests.fleet_web.world import World

from comfyfleet.fleet.states import State

INSTANCES = 200
RATE = 20  # updates per second
SECONDS = 5


async def _many(world: World) -> list[str]:
    states = [State.READY, State.PROVISIONING, State.BOOTING, State.CREATING]
    return [await world.add(states[i % 4], slot=i) for i in range(INSTANCES)]


async def _churn(world: World, ids: list[str]) -> int:
    """RATE row updates a second for SECONDS (each changes what the row shows)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    n = 0
    while n < RATE * SECONDS:
        row_id = ids[(n * 7) % len(ids)]
        await world.store.update(row_id, gpu_name=f"GPU update {n}", dph=0.1 + n / 1000)
        n += 1
        await asyncio.sleep(max(0.0, start + n / RATE - loop.time()))
    return n


def test_200_instances_20_updates_a_second_no_long_task(page: Page, world: World) -> None:
    ids = world.run(_many(world))
    sign_in(page, world)
    expect(page.locator("tr[data-instance-id]")).to_have_count(INSTANCES)
    expect(page.locator("#live")).to_have_text("live", timeout=15_000)
    page.evaluate("window.__longtasks.length = 0")  # the first render is measured separately
    sent = world.run(_churn(world, ids))
    last = f"GPU update {sent - 1}"
    expect(page.locator("tbody")).to_contain_text(last, timeout=15_000)
    longest = page.evaluate("Math.max(0, ...window.__longtasks)")
    tasks = page.evaluate("window.__longtasks")
    assert longest <= 200, f"the main thread was blocked for {longest:.0f} ms: {tasks}"
    assert page.locator("tr[data-instance-id]").count() == INSTANCES
