"""The dashboard in Debian's Chromium against the real lease API app and store."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from playwright.sync_api import Page, expect
from tests.fleet_web.conftest import sign_in
from tests.fleet_web.world import World

from comfyfleet.fleet.states import State

DEADLINE = 15_000  # ms: generous, the machine is shared


def row(page: Page, row_id: str):  # type: ignore[no-untyped-def]
    return page.locator(f'tr[data-instance-id="{row_id}"]')


def test_wrong_token_shows_the_login_form_again(page: Page, world: World) -> None:
    world.call(world.add, State.READY)
    sign_in(page, world, "not-the-token")
    expect(page.locator("input[type=password]")).to_have_count(1)
    expect(page.locator("[role=alert]")).to_contain_text("wrong token")
    expect(page.locator("tr[data-instance-id]")).to_have_count(0)
    assert page.context.cookies() == []
    sign_in(page, world)
    expect(page.locator("tr[data-instance-id]")).to_have_count(1)
    assert world.token not in page.url
    (cookie,) = page.context.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert cookie["value"] == world.token


def test_the_page_lists_the_instances_with_their_hooks(page: Page, world: World) -> None:
    ids = {
        world.call(world.add, State.READY, slot=0): "ready",
        world.call(world.add, State.PROVISIONING, slot=1): "provisioning",
        world.call(world.add, State.BOOTING, slot=2): "booting",
    }
    sign_in(page, world)
    for row_id, state in ids.items():
        expect(row(page, row_id)).to_have_attribute("data-state", state)
        # every instance's log panel is there from the start, collapsed
        expect(page.locator(f'[data-log-for="{row_id}"]')).to_have_count(1)
        for action in ("lease", "release", "destroy"):
            expect(row(page, row_id).locator(f'[data-action="{action}"]')).to_have_count(1)
    expect(page.locator('[data-total="ready"]')).to_have_text("1")
    expect(page.locator('[data-total="provisioning"]')).to_have_text("2")
    expect(page.locator('[data-total="spend_per_hour"]')).to_have_text("$0.75")
    # a row that appears later is added live, its panel too
    late = world.call(world.add, State.CREATING, slot=3)
    expect(row(page, late)).to_have_attribute("data-state", "creating", timeout=DEADLINE)
    expect(page.locator(f'[data-log-for="{late}"]')).to_have_count(1)


def test_lease_release_and_destroy_buttons_change_the_state(page: Page, world: World) -> None:
    first = world.call(world.add, State.READY, slot=0)
    second = world.call(world.add, State.READY, slot=1)
    sign_in(page, world)
    row(page, first).locator('[data-action="lease"]').click()
    expect(row(page, first)).to_have_attribute("data-state", "leased", timeout=DEADLINE)
    assert world.call(world.state, first) == "leased"
    expect(page.locator('[data-total="leased"]')).to_have_text("1", timeout=DEADLINE)
    row(page, first).locator('[data-action="release"]').click()
    expect(row(page, first)).to_have_attribute("data-state", "releasing", timeout=DEADLINE)
    assert world.call(world.state, first) == "releasing"
    # destroy asks first: dismissed, nothing happens; accepted, the instance goes
    page.once("dialog", lambda d: d.dismiss())
    row(page, second).locator('[data-action="destroy"]').click()
    page.wait_for_timeout(300)  # a dismissed confirm sends nothing; give a wrong send a chance
    assert world.call(world.state, second) == "ready"
    page.once("dialog", lambda d: d.accept())
    row(page, second).locator('[data-action="destroy"]').click()
    expect(row(page, second)).to_have_attribute("data-state", "destroying", timeout=DEADLINE)
    assert world.call(world.state, second) == "destroying"


def test_keyboard_leases_a_row(page: Page, world: World) -> None:
    row_id = world.call(world.add, State.READY)
    sign_in(page, world)
    button = row(page, row_id).locator('[data-action="lease"]')
    button.focus()
    page.keyboard.press("Enter")
    expect(row(page, row_id)).to_have_attribute("data-state", "leased", timeout=DEADLINE)


def test_state_changing_requests_need_the_csrf_header(page: Page, world: World) -> None:
    row_id = world.call(world.add, State.READY)
    sign_in(page, world)
    body = json.dumps({"instance_id": row_id})
    headers = {"Content-Type": "application/json"}
    # the cookie alone (what a cross-site form would carry) is refused
    refused = page.request.post(world.url + "v1/leases", data=body, headers=headers)
    assert refused.status == 401
    assert world.call(world.state, row_id) == "ready"
    csrf = page.locator('meta[name="csrf"]').get_attribute("content")
    ok = page.request.post(
        world.url + "v1/leases", data=body, headers={**headers, "X-CSRF-Token": csrf or ""}
    )
    assert ok.status == 201, ok.text()
    assert world.call(world.state, row_id) == "leased"


def test_login_from_another_site_is_refused(world: World) -> None:
    req = urllib.request.Request(
        world.url + "login",
        data=f"token={world.token}".encode(),
        headers={
            "Origin": "https://evil.example",
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    try:
        urllib.request.urlopen(req, timeout=10)
        raise AssertionError("a cross-site login was accepted")
    except urllib.error.HTTPError as exc:
        assert exc.code == 403
        assert "set-cookie" not in {k.lower() for k in exc.headers}


def test_events_and_page_need_the_cookie(world: World) -> None:
    world.call(world.add, State.READY)
    try:
        urllib.request.urlopen(world.url + "ui/events", timeout=10)
        raise AssertionError("the event stream answered without a token")
    except urllib.error.HTTPError as exc:
        assert exc.code == 401
    with urllib.request.urlopen(world.url, timeout=10) as resp:
        html = resp.read().decode()
    assert 'type="password"' in html and "data-instance-id" not in html
    assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
