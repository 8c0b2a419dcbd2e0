"""The dashboard's pure parts: phase timeline from log lines, speed, totals."""

from __future__ import annotations

from datetime import UTC, datetime

from comfyfleet.fleet.states import State
from comfyfleet.fleet.store import InstanceRow
from comfyfleet.fleet.web.auth import csrf_token
from comfyfleet.fleet.web.view import Speed, Timeline, timeline_svg_spans, totals


def ts(second: int) -> str:
    return f"[2026-12-01T10:00:{second:02d}.000Z]"


def test_timeline_runs_download_and_install_side_by_side() -> None:
    tl = Timeline()
    for line in (
        f"{ts(0)} phase download",
        f"{ts(1)} phase install",
        f"{ts(1)} download a.safetensors",  # not a phase line
        "  | pip: [2026-12-01T10:00:02.000Z] phase verify",  # foreign output cannot fake one
        f"{ts(10)} phase verify",
        f"{ts(12)} phase start",
        f"{ts(12)} phase start",  # announced twice: one phase
        f"{ts(15)} comfyui ready",
        "PROVISIONING COMPLETE",  # the marker line has no timestamp: it ends at the last one
    ):
        tl.feed(line)
    spans = {name: (end - start, lane) for name, start, end, lane in tl.spans(now=0)}
    assert spans == {
        "download": (10.0, 0),  # until verify, not until install started
        "install": (9.0, 1),
        "verify": (2.0, 0),
        "start": (3.0, 0),
    }
    drawn = timeline_svg_spans(tl, 0, width=150)
    assert [(d["phase"], d["x"], d["w"]) for d in drawn] == [
        ("download", 0.0, 100.0),
        ("install", 10.0, 90.0),
        ("verify", 100.0, 20.0),
        ("start", 120.0, 30.0),
    ]
    # a new run after the marker starts a new timeline
    tl.feed(f"{ts(20)} phase download")
    assert [name for name, *_ in tl.spans(now=0)] == ["download"]


def test_speed_averages_recent_samples_and_restarts_on_a_new_run() -> None:
    sp = Speed()
    assert sp.value() == 0.0
    sp.feed(0.0, 0)
    sp.feed(1.0, 1000)
    sp.feed(2.0, 3000)
    assert sp.value() == 1500.0
    sp.feed(3.0, 10)  # fewer bytes: a new run
    assert sp.value() == 0.0


def _row(row_id: str, state: State, dph: float, created: float, since: float) -> InstanceRow:
    return InstanceRow(
        id=row_id, pool="p", label=f"comfyfleet-p-{row_id:0>12}", state=state,
        provider_kind="vast", provider_id="1", offer_id=None, machine_id=None, gpu_name=None,
        dph=dph, created_at=created, updated_at=since, state_since=since, failure_reason=None,
        lease_id=None, ssh_host=None, ssh_port=None, ssh_user=None, destroy_attempts=0,
    )  # fmt: skip


def test_totals_count_states_and_the_spend_since_midnight() -> None:
    midnight = datetime(2026, 12, 1, tzinfo=UTC).timestamp()
    now = midnight + 3 * 3600
    rows = [
        _row("a", State.READY, 1.0, midnight - 3600, midnight),  # since yesterday: 3 h today
        _row("b", State.PROVISIONING, 2.0, now - 1800, now - 60),  # half an hour
        _row("c", State.LEASED, 0.5, midnight + 3600, now),  # two hours
        _row("d", State.DESTROYED, 4.0, midnight, midnight + 900),  # gone after 15 min
        _row("e", State.DESTROYED, 9.0, midnight - 7200, midnight - 3600),  # gone yesterday
    ]
    t = totals(rows, now)
    assert (t.ready, t.provisioning, t.leased) == (1, 1, 1)
    assert t.spend_per_hour == 3.5
    assert abs(t.spend_today - (3.0 + 1.0 + 1.0 + 1.0)) < 1e-9


def test_the_csrf_token_is_not_the_token() -> None:
    assert csrf_token("secret") != "secret" and "secret" not in csrf_token("secret")
    assert csrf_token("secret") == csrf_token("secret") != csrf_token("other")


def test_age_changes_once_a_minute() -> None:
    from comfyfleet.fleet.web.view import age_text

    assert [age_text(s) for s in (0, 59.9, 60, 3599, 3600, 7500)] == [
        "<1m", "<1m", "1m", "59m", "1h00m", "2h05m",
    ]  # fmt: skip
