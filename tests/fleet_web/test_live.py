"""The dashboard's live parts in Chromium: log lines, progress and the timeline over SSE."""

from __future__ import annotations

from playwright.sync_api import Page, expect
from tests.fleet_web.conftest import sign_in
from tests.fleet_web.test_dashboard import DEADLINE, row
from tests.fleet_web.world import World

from comfyfleet.fleet.states import State


def test_a_new_log_line_and_the_progress_appear_live(page: Page, world: World) -> None:
    row_id = world.call(world.add, State.PROVISIONING)
    follower = world.call(world.follower, row_id)
    world.run(follower.line("[2026-12-01T10:00:00.000Z] phase download"))
    world.run(follower.progress(phase="download", bytes_done=0, bytes_total=4 << 20))
    sign_in(page, world)
    panel = page.locator(f'[data-log-for="{row_id}"]')
    expect(panel).to_contain_text("phase download", timeout=DEADLINE)
    bar = row(page, row_id).locator("progress")
    expect(bar).to_have_attribute("value", "0", timeout=DEADLINE)
    world.run(follower.line("[2026-12-01T10:00:01.000Z] download model-a.safetensors 1 MiB"))
    expect(panel).to_contain_text("model-a.safetensors", timeout=DEADLINE)
    world.run(follower.progress(phase="download", bytes_done=3 << 20, bytes_total=4 << 20))
    expect(bar).to_have_attribute("value", str(3 << 20), timeout=DEADLINE)
    # hostile log text is text: no element is made from it, control characters escaped
    world.run(follower.line('evil <img src=x onerror="window.pwned=1"> \x1b[31m'))
    expect(panel).to_contain_text("<img src=x", timeout=DEADLINE)
    expect(panel).to_contain_text("\\x1b[31m")
    assert panel.locator("img").count() == 0
    assert page.evaluate("window.pwned === undefined")
    # the timeline draws the phases as inline SVG
    world.run(follower.line("[2026-12-01T10:00:02.000Z] phase install"))
    world.run(follower.line("[2026-12-01T10:00:05.000Z] phase verify"))
    svg = page.locator(f"#t-{row_id}")
    expect(svg.locator("g.ph-verify rect")).to_have_count(1, timeout=DEADLINE)
    expect(svg.locator("g.ph-install rect")).to_have_attribute("y", "18")
