"""`comfyfleet pool …` as a user runs it: bad input, start-up failures, status, destroy-all."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from poolrun import POOL, PoolRun, add_foreigners, wait_until
from vastdouble import VastDouble

from comfyfleet.fleet.states import LIVE, State
from comfyfleet.testing.modelserver import ModelServer

S = State


@pytest.fixture
def double() -> Iterator[VastDouble]:
    d = VastDouble()
    d.add_offers(12)
    d.start_in_thread()
    try:
        yield d
    finally:
        d.stop_thread()


@pytest.fixture
def run(tmp_path: Path, double: VastDouble) -> Iterator[PoolRun]:
    r = PoolRun(tmp_path, double, f"sqlite:///{tmp_path / 'pool.db'}")
    try:
        yield r
    finally:
        if r.proc is not None and r.proc.poll() is None:
            r.kill()


def serve_once(run: PoolRun, **env: str) -> tuple[int, str]:
    """Run serve until it exits by itself (start-up refusals); return (code, stderr)."""
    proc = run.start(**env)
    code = proc.wait(timeout=60)
    return code, run.serve_log().split("--- start")[-1].split("\n", 1)[1]


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and "Traceback" not in stderr
    return lines[0]


# --- bad input: exit 2, one line, nothing created -------------------------------------------


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("min_ready = 2", "min_ready = 2\nmin_raedy = 1"), "pool.min_raedy: unknown key"),
        (("min_ready = 2", "min_ready = 9"), "min_ready (9) is greater than max_instances (3)"),
        (('name = "sdxl"', 'name = "SDXL!"'), "pool.name:"),
    ],
)
def test_invalid_config_exits_2_with_one_line_and_creates_nothing(
    run: PoolRun, double: VastDouble, edit: tuple[str, str], expected: str
) -> None:
    run.config.write_text(run.config.read_text().replace(*edit))
    code, err = serve_once(run)
    assert code == 2
    assert expected in one_error_line(err) and str(run.config) in err
    assert double.requests == [] and not (run.tmp / "pool.db").exists()


def test_missing_vast_api_key(run: PoolRun, double: VastDouble) -> None:
    code, err = serve_once(run, VAST_API_KEY="")
    assert code == 2 and "VAST_API_KEY is not set" in one_error_line(err)
    assert double.requests == []


def test_wrong_api_key_is_refused_at_start_up(run: PoolRun, double: VastDouble) -> None:
    code, err = serve_once(run, VAST_API_KEY="not-the-key")
    assert code == 2
    line = one_error_line(err)
    assert "not-the-key" not in line and double.requests_to("create") == []


def test_unreachable_api_url(run: PoolRun, double: VastDouble) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run.config.write_text(run.config.read_text().replace(double.url, f"http://127.0.0.1:{port}"))
    code, err = serve_once(run)
    assert code == 2 and one_error_line(err)
    assert double.requests == []


def test_429_and_5xx_at_start_up_are_retried_until_the_provider_answers(
    run: PoolRun, double: VastDouble
) -> None:
    double.faults.next("list", "503", count=3)
    double.faults.next("list", "429_text", count=3)
    run.start()
    run.wait_serving(timeout=90)
    wait_until(run.settled, 40, "the pool to come up after the provider's bad minute")
    assert run.stop() == 130


def test_a_model_that_would_not_download_stops_serve_before_any_create(
    run: PoolRun, double: VastDouble, server: ModelServer
) -> None:
    good = server.add_hf_file("org/repo", "ok.safetensors", b"x" * 64)
    missing = f"{server.base_url}/org/repo/resolve/main/typo.safetensors"
    (run.tmp / "manifest.toml").write_text(
        'version = 1\n[comfyui]\nrepo = "https://example.invalid/ComfyUI.git"\nref = "v1"\n'
        f'[[models]]\nurl = "{good}"\nfolder = "vae"\n'
        f'[[models]]\nurl = "{missing}"\nfolder = "vae"\n'
    )
    code, err = serve_once(run)
    assert code == 2
    assert "1 required model(s)" in err and f"not_found vae/? {missing}" in err
    assert double.requests_to("create") == [] and double.requests_to("search") == []


def test_an_invalid_manifest_is_exit_2(run: PoolRun, double: VastDouble) -> None:
    (run.tmp / "manifest.toml").write_text("version = 1\n[comfyui]\nrepoo = 'x'\n")
    code, err = serve_once(run)
    assert code == 2 and "comfyui.repoo" in err and double.requests == []


# --- status -------------------------------------------------------------------------------


def test_status_json_tells_the_truth(run: PoolRun, double: VastDouble) -> None:
    run.start()
    run.wait_serving()
    wait_until(run.settled, 40, "the pool to settle")
    assert run.stop() == 130
    out = run.cli("status", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["pool"] == POOL and doc["draining"] is False
    alive = {str(i.id) for i in double.live()}
    assert {i["provider_id"] for i in doc["instances"]} == alive
    for item in doc["instances"]:
        assert {"id", "provider_id", "state", "label", "dph", "lease_id"} <= item.keys()
        assert item["state"] in ("booting", "provisioning") and item["dph"] > 0
    assert doc["spend_per_hour"] == pytest.approx(sum(i["dph"] for i in doc["instances"]), abs=1e-3)

    double.kill(int(doc["instances"][0]["provider_id"]))
    live = json.loads(run.cli("status", "--json", "--live").stdout)
    by_id = {i["provider_id"]: i for i in live["instances"]}
    assert by_id[doc["instances"][0]["provider_id"]]["provider_status"] is None  # gone
    assert by_id[doc["instances"][1]["provider_id"]]["provider_status"] == "running"
    assert live["untracked"] == []

    text = run.cli("status")
    assert text.returncode == 0 and f"pool {POOL}: 2 instance(s)" in text.stdout


# --- destroy-all and resume -----------------------------------------------------------------


def test_destroy_all_without_yes_asks_and_changes_nothing(run: PoolRun, double: VastDouble) -> None:
    out = run.cli("destroy-all")
    assert out.returncode == 2 and "--yes" in out.stderr
    assert double.requests == []


def test_destroy_all_while_serve_runs_leaves_nothing_of_ours_and_touches_nobody_else(
    run: PoolRun, double: VastDouble
) -> None:
    foreign = add_foreigners(double)
    run.start()
    run.wait_serving()
    wait_until(run.settled, 40, "the pool to settle")
    out = run.cli("destroy-all", "--yes", timeout=120)
    assert out.returncode == 0, out.stderr
    assert "none of its instances is left" in out.stdout
    assert double.live() == []  # the provider's own view: nothing of ours alive
    assert all(f.alive for f in foreign)
    # the ledger stops: nothing of ours bills any more
    spent = double.spend()
    time.sleep(1.0)
    assert double.spend() == spent and double.spend_rate() == 0.0
    # the running serve sees draining and creates nothing
    n = len(double.requests_to("create"))
    time.sleep(1.5)
    assert len(double.requests_to("create")) == n and double.live() == []
    assert json.loads(run.cli("status", "--json").stdout)["draining"] is True
    assert not [r for r in run.rows() if r.state in LIVE]

    out = run.cli("resume")
    assert out.returncode == 0 and "resumed" in out.stdout
    wait_until(run.settled, 40, "the resumed pool to come back to min_ready")
    run.assert_consistent(foreign)
    assert run.stop() == 130


def test_destroy_all_retries_refused_destroys_until_confirmed(
    run: PoolRun, double: VastDouble
) -> None:
    run.start()
    run.wait_serving()
    wait_until(run.settled, 40, "the pool to settle")
    assert run.stop() == 130
    double.faults.next("destroy", "429_json", count=8)
    double.faults.next("list", "503", count=2)
    out = run.cli("destroy-all", "--yes", timeout=180)
    assert out.returncode == 0, out.stderr
    assert double.live() == []
    assert {r.state for r in run.rows()} == {S.DESTROYED}


# --- min_ready under faults -----------------------------------------------------------------


def test_serve_keeps_min_ready_under_random_faults(run: PoolRun, double: VastDouble) -> None:
    foreign = add_foreigners(double)
    for endpoint, kind, p in [
        ("list", "429_text", 0.15), ("list", "503", 0.1), ("create", "lost", 0.2),
        ("create", "error_but_created", 0.15), ("create", "no_such_ask", 0.15),
        ("destroy", "429_json", 0.3), ("search", "502", 0.2),
    ]:  # fmt: skip
        double.faults.rate(endpoint, kind, p, seed=7)
    double.next_detours.extend(["exited", "oci", None, "stuck_loading", "outbid", "offline"])
    run.write(provision_timeout="4s")
    run.start()
    run.wait_serving()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # let it churn: failures, timeouts, replacements
        time.sleep(0.5)
        assert double.max_alive <= run.max_instances
    double.faults.clear()
    run.stop()
    run.write(provision_timeout="1h")
    run.start()
    run.wait_serving()
    wait_until(run.settled, 40, "min_ready instances up after the faults")
    run.assert_consistent(foreign)
    assert run.stop() == 130
