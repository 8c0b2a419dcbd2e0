"""The dead-man's switch: the watchdog (run here as the real script, as it runs on an instance)
against the Vast double, which accepts a per-instance key for that instance only."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from poolrun import wait_until
from vastdouble import VastDouble

from comfyfleet.fleet.config import parse_pool_config
from comfyfleet.fleet.deadman import WATCHDOG, switch_timeout, watchdog_input
from comfyfleet.fleet.providers.base import Created
from comfyfleet.fleet.providers.vast import VastProvider


def _create(double: VastDouble, n: int) -> list[Created]:
    """Rent ``n`` instances through the real provider (the key comes from the create answer)."""

    async def go() -> list[Created]:
        p = VastProvider(double.url, double.api_key, pool="sdxl", offers={}, image="x", disk_gb=40)
        try:
            offers = await p.search_offers()
            return [
                await p.create(o, label=f"comfyfleet-sdxl-00000000000{i}", env={}, onstart="",
                               ssh_public_key="ssh-ed25519 AAAA test")
                for i, o in enumerate(offers[:n])
            ]  # fmt: skip
        finally:
            await p.aclose()

    return asyncio.run(go())


def _watchdog(tmp: Path, double: VastDouble, stdin: str) -> subprocess.Popen[str]:
    env = {"PATH": os.environ["PATH"]}  # like an instance: nothing of ours in the environment
    proc = subprocess.Popen(
        [sys.executable, str(WATCHDOG)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=env, cwd=tmp,
    )  # fmt: skip
    assert proc.stdin is not None
    proc.stdin.write(stdin)
    proc.stdin.close()
    return proc


def _alive(double: VastDouble, inst: Created) -> bool:
    with double._lock:
        return double.instances[int(inst.provider_id)].alive


def _destroys(double: VastDouble) -> list:
    return double.requests_to("destroy")


def test_no_heartbeat_for_the_timeout_destroys_the_instance_with_its_own_key(
    tmp_path: Path, double: VastDouble
) -> None:
    first, second = _create(double, 2)
    assert first.instance_api_key and first.instance_api_key != double.api_key
    stale = tmp_path / "stale"
    fresh = tmp_path / "fresh"
    # two instances: one control plane stopped for good, one that keeps renewing
    dead = _watchdog(tmp_path, double, watchdog_input(
        api_url=double.url, instance_id=first.provider_id, api_key=first.instance_api_key,
        heartbeat=str(stale), timeout=1.5, check_every=0.2,
    ))  # fmt: skip
    kept = _watchdog(tmp_path, double, watchdog_input(
        api_url=double.url, instance_id=second.provider_id, api_key=second.instance_api_key,
        heartbeat=str(fresh), timeout=1.5, check_every=0.2,
    ))  # fmt: skip
    try:
        deadline = time.monotonic() + 6.0
        while dead.poll() is None and time.monotonic() < deadline:
            if fresh.exists():
                os.utime(fresh)  # the heartbeat, as `touch` over SSH renews it
            time.sleep(0.2)
        assert dead.wait(timeout=10) == 0
        for _ in range(20):  # the other one keeps renewing for 2 more timeouts
            os.utime(fresh)
            time.sleep(0.15)
        assert not _alive(double, first)  # destroyed: billing stopped
        assert _alive(double, second)  # renewed: kept
        assert kept.poll() is None
        calls = _destroys(double)
        assert [c.path.rstrip("/").rsplit("/", 1)[-1] for c in calls] == [first.provider_id]
        # its own key, not the operator's
        assert calls[0].auth == f"instance:{first.provider_id}"
        log = (tmp_path / "stale.log").read_text()
        assert "destroy instance" in log and first.instance_api_key not in log
    finally:
        for p in (dead, kept):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_falls_back_to_pid1_container_id_and_key(tmp_path: Path, double: VastDouble) -> None:
    (inst,) = _create(double, 1)
    environ = tmp_path / "environ"
    environ.write_bytes(
        b"PATH=/usr/bin\0CONTAINER_ID=" + inst.provider_id.encode()
        + b"\0CONTAINER_API_KEY=" + (inst.instance_api_key or "").encode() + b"\0"
    )  # fmt: skip
    doc = watchdog_input(
        api_url=double.url, instance_id=None, api_key=None, heartbeat=str(tmp_path / "hb"),
        timeout=0.5, check_every=0.2,
    )  # fmt: skip
    proc = _watchdog(tmp_path, double, doc[:-1] + f', "pid1_environ": "{environ}"}}')
    assert proc.wait(timeout=20) == 0
    assert not _alive(double, inst)
    assert _destroys(double)[0].auth == f"instance:{inst.provider_id}"


def test_the_double_refuses_another_instances_key(tmp_path: Path, double: VastDouble) -> None:
    a, b = _create(double, 2)
    # b's key on a's id: the watchdog keeps trying (401), a stays alive
    proc = _watchdog(tmp_path, double, watchdog_input(
        api_url=double.url, instance_id=a.provider_id, api_key=b.instance_api_key,
        heartbeat=str(tmp_path / "hb"), timeout=0.3, check_every=0.1,
    ))  # fmt: skip
    try:
        wait_until(lambda: _destroys(double), 10, "the watchdog's destroy call")
        assert _destroys(double)[0].status == 401
        assert _alive(double, a)
        assert _alive(double, b)
    finally:
        proc.kill()
        proc.wait()


def test_no_id_or_key_anywhere_turns_the_switch_off(tmp_path: Path, double: VastDouble) -> None:
    doc = watchdog_input(
        api_url=double.url, instance_id=None, api_key=None, heartbeat=str(tmp_path / "hb"),
        timeout=0.1,
    )  # fmt: skip
    proc = _watchdog(tmp_path, double, doc[:-1] + f', "pid1_environ": "{tmp_path / "none"}"}}')
    assert proc.wait(timeout=10) == 2
    assert "off" in (tmp_path / "hb.log").read_text()
    assert not _destroys(double)


@pytest.mark.parametrize(
    ("provider", "setting", "expected"),
    [
        ("vast", 'dead_man_switch = "30m"', 1800.0),
        ("vast", "", None),
        ("ssh", 'dead_man_switch = "30m"', None),
    ],
)
def test_the_switch_is_vast_only(
    tmp_path: Path, provider: str, setting: str, expected: float | None
) -> None:
    import tomllib

    prov = (
        '[provider]\nkind = "vast"\n'
        if provider == "vast"
        else '[provider]\nkind = "ssh"\nhosts = [{host = "10.0.0.1"}]\n'
    )
    text = f'[pool]\nname = "sdxl"\nmanifest = "m.toml"\n{setting}\n{prov}'
    cfg = parse_pool_config(tomllib.loads(text), base_dir=tmp_path)
    assert switch_timeout(cfg) == expected
