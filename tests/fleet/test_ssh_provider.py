"""The SSH-hosts provider against real OpenSSH servers on loopback (one sshd per "host", each
with its own home directory, so each has its own claim file)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from comfyfleet.fleet.errors import OfferUnavailable, ProviderAuthError, ProviderUnreachable
from comfyfleet.fleet.providers.base import Offer, Provider
from comfyfleet.fleet.providers.ssh import HostSpec, SshHostsProvider
from comfyfleet.runtime import PidRecord, _proc_stat
from sshd import SshServer, wait_until

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDk3b2x0ZXN0a2V5Zm9ydGhlcG9vbA pool@control"


@dataclass
class Host:
    server: SshServer
    home: Path
    root: Path  # the instance root on this "host"

    @property
    def spec(self) -> HostSpec:
        return HostSpec(
            "127.0.0.1", port=self.server.port, user=self.server.user, key=self.server.client_key
        )

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def claim_file(self) -> Path:
        return self.home / ".comfyfleet" / "claim"


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[list[Host]]:
    made: list[Host] = []
    try:
        for i in range(3):
            base = tmp_path / f"h{i}"
            (base / "sshd").mkdir(parents=True)
            home = base / "home"
            home.mkdir()
            server = SshServer(base / "sshd")
            server.extra_options["SetEnv"] = f"HOME={home}"
            server.start()
            made.append(Host(server, home, base / "workspace"))
        yield made
    finally:
        for h in made:
            h.server.stop()


@pytest.fixture
def known_hosts(tmp_path: Path, hosts: list[Host]) -> Path:
    path = tmp_path / "known_hosts"
    path.write_text("".join(h.server.known_hosts.read_text() for h in hosts))
    return path


@pytest.fixture
def make(hosts: list[Host], known_hosts: Path) -> Callable[..., SshHostsProvider]:
    def factory(pool: str = "sdxl", which: list[Host] | None = None, **kw) -> SshHostsProvider:
        chosen = hosts if which is None else which
        kw.setdefault("instance_root", str(hosts[0].root))
        return SshHostsProvider(
            [h.spec for h in chosen], pool=pool, known_hosts=known_hosts, stop_grace=2, **kw
        )

    return factory


def label(n: int, pool: str = "sdxl") -> str:
    return f"comfyfleet-{pool}-{n:012x}"


async def claim(provider: SshHostsProvider, host: Host, n: int = 0) -> str:
    created = await provider.create(
        Offer(host.id, host.id, "", 0, 0.0),
        label=label(n, provider.pool),
        env={"IGNORED": "1"},
        onstart="",
        ssh_public_key=KEY,
    )
    return created.provider_id


def test_satisfies_the_provider_protocol(make):
    assert isinstance(make(), Provider)


async def test_every_free_host_is_an_offer_and_a_claimed_one_is_not(make, hosts):
    provider = make()
    offers = await provider.search_offers()
    assert sorted(o.offer_id for o in offers) == sorted(h.id for h in hosts)
    assert all(o.dph == 0.0 and o.machine_id == o.offer_id for o in offers)
    await claim(provider, hosts[1])
    offers = await provider.search_offers()
    assert sorted(o.offer_id for o in offers) == sorted([hosts[0].id, hosts[2].id])
    provider.block(hosts[0].id, "provision failed")
    assert [o.offer_id for o in await provider.search_offers()] == [hosts[2].id]


async def test_create_writes_the_claim_and_list_reports_it_as_the_ownership_rule_needs(make, hosts):
    provider = make()
    pid = await claim(provider, hosts[0], n=5)
    assert pid == hosts[0].id
    assert json.loads(hosts[0].claim_file.read_text()) == {"label": label(5), "pool": "sdxl"}
    (inst,) = await provider.list_instances()
    assert (inst.provider_id, inst.label, inst.pool_marker) == (hosts[0].id, label(5), "sdxl")
    assert inst.status == "running" and inst.dph == 0.0
    assert (inst.ssh.host, inst.ssh.port, inst.ssh.user) == (
        "127.0.0.1",
        hosts[0].server.port,
        hosts[0].server.user,
    )
    assert provider.health(inst)[0] == "reachable"
    assert (await provider.get(pid)).label == label(5)
    assert await provider.get(hosts[1].id) is None  # unclaimed: nothing there


async def test_a_claim_is_exclusive_and_idempotent_for_its_own_label(make, hosts):
    ours, theirs = make("sdxl"), make("sdxl-xl")
    await claim(ours, hosts[0], n=1)
    assert await claim(ours, hosts[0], n=1) == hosts[0].id  # a lost answer, retried
    with pytest.raises(OfferUnavailable):
        await claim(ours, hosts[0], n=2)
    with pytest.raises(OfferUnavailable):
        await claim(theirs, hosts[0], n=1)
    assert json.loads(hosts[0].claim_file.read_text())["label"] == label(1)
    assert not list(hosts[0].claim_file.parent.glob(".claim.*"))  # no temp file left


async def test_two_pools_racing_for_one_host_get_it_once(make, hosts):
    a, b = make("pool-a"), make("pool-b")
    results = await asyncio.gather(
        claim(a, hosts[0], n=1), claim(b, hosts[0], n=1), return_exceptions=True
    )
    won = [r for r in results if isinstance(r, str)]
    lost = [r for r in results if isinstance(r, OfferUnavailable)]
    assert len(won) == 1 and len(lost) == 1
    holder = json.loads(hosts[0].claim_file.read_text())["pool"]
    assert holder == ("pool-a" if isinstance(results[0], str) else "pool-b")


async def test_a_claim_file_we_did_not_write_makes_the_host_neither_free_nor_ours(make, hosts):
    hosts[0].claim_file.parent.mkdir(parents=True)
    hosts[0].claim_file.write_text("reserved by the night shift\n")
    provider = make()
    assert hosts[0].id not in [o.offer_id for o in await provider.search_offers()]
    assert await provider.list_instances() == []
    await provider.destroy(hosts[0].id)
    assert hosts[0].claim_file.read_text() == "reserved by the night shift\n"


def spawn_group(tmp_path: Path, extra: str = "") -> subprocess.Popen:
    """A session leader with a child in its group, like a ComfyUI started by comfyfleet."""
    script = f"{extra}\nsleep 300 & sleep 300"
    return subprocess.Popen(
        ["sh", "-c", script], start_new_session=True, stdin=subprocess.DEVNULL, cwd=tmp_path
    )


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``."""
    out = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except (psutil.NoSuchProcess, ProcessLookupError):
            pass
    return out


def write_pid_file(root: Path, pid: int, start_ticks: int | None) -> Path:
    state = root / ".comfyfleet"
    state.mkdir(parents=True, exist_ok=True)
    record = PidRecord(
        pid=pid,
        host="127.0.0.1",
        port=8188,
        argv=[sys.executable, "main.py"],
        cwd=str(root),
        started_at=0.0,
        start_ticks=start_ticks,
    )
    path = state / "comfyui.pid"
    path.write_text(record.to_json())
    return path


async def test_destroy_stops_comfyui_by_its_pid_files_group_and_releases_the_host(
    make, hosts, tmp_path
):
    provider = make()
    host = hosts[0]
    await claim(provider, host)
    proc = spawn_group(tmp_path)
    wait_until(lambda: len(group_members(proc.pid)) >= 2, what="the group to start")
    stat = _proc_stat(proc.pid)
    pid_file = write_pid_file(host.root, proc.pid, stat[1] if stat else None)
    await provider.destroy(host.id)
    proc.wait(10)
    wait_until(lambda: group_members(proc.pid) == [], what="the whole group to be gone")
    assert not pid_file.exists() and not host.claim_file.exists()
    assert host.id in [o.offer_id for o in await provider.search_offers()]
    await provider.destroy(host.id)  # already released: success, nothing touched


async def test_destroy_stops_a_provision_holding_the_roots_lock(make, hosts, tmp_path):
    provider = make()
    host = hosts[0]
    await claim(provider, host)
    lock = host.root / ".comfyfleet" / "lock"
    lock.parent.mkdir(parents=True)
    lock.touch()
    proc = spawn_group(tmp_path, extra=f"exec 9>>{lock}")
    wait_until(lambda: len(group_members(proc.pid)) >= 2, what="the provision to start")
    await provider.destroy(host.id)
    proc.wait(10)
    wait_until(lambda: group_members(proc.pid) == [], what="the provision to be gone")
    assert not host.claim_file.exists()


async def test_a_reused_pid_is_not_killed(make, hosts, tmp_path):
    provider = make()
    host = hosts[0]
    await claim(provider, host)
    bystander = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        stat = _proc_stat(bystander.pid)
        write_pid_file(host.root, bystander.pid, (stat[1] if stat else 0) + 12345)
        await provider.destroy(host.id)
        assert bystander.poll() is None  # another process now owns that pid: left alone
        assert not host.claim_file.exists()
    finally:
        bystander.kill()
        bystander.wait()


async def test_destroy_leaves_another_pools_or_another_labels_claim_alone(make, hosts, tmp_path):
    theirs = make("sdxl-xl")
    await claim(theirs, hosts[0], n=9)
    proc = spawn_group(tmp_path)
    try:
        stat = _proc_stat(proc.pid)
        write_pid_file(hosts[0].root, proc.pid, stat[1] if stat else None)
        ours = make("sdxl")
        await ours.destroy(hosts[0].id)
        assert json.loads(hosts[0].claim_file.read_text())["pool"] == "sdxl-xl"
        await theirs.destroy(hosts[0].id, label=label(1, "sdxl-xl"))  # a stale label
        assert hosts[0].claim_file.exists() and proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


async def test_an_unreachable_host_is_offline_with_its_last_claim_never_gone(make, hosts):
    provider = make()
    await claim(provider, hosts[0], n=3)
    await claim(provider, hosts[1], n=4)
    assert len(await provider.list_instances()) == 2
    hosts[0].server.stop()
    listed = {i.provider_id: i for i in await provider.list_instances()}
    down = listed[hosts[0].id]
    assert down.status == "offline" and down.label == label(3) and down.pool_marker == "sdxl"
    assert down.ssh is None and "unreachable" in down.status_msg
    assert provider.health(down)[0] == "booting"
    assert listed[hosts[1].id].status == "running"
    assert (await provider.get(hosts[0].id)).status == "offline"
    with pytest.raises(ProviderUnreachable):
        await provider.destroy(hosts[0].id)  # retried by the caller until the host is back
    assert hosts[0].id not in [o.offer_id for o in await provider.search_offers()]
    hosts[0].server.start()
    await provider.destroy(hosts[0].id)
    assert not hosts[0].claim_file.exists()


async def test_when_no_host_answers_the_listing_raises(make, hosts):
    provider = make(which=hosts[:2])
    for h in hosts[:2]:
        h.server.stop()
    with pytest.raises(ProviderUnreachable):
        await provider.list_instances()


async def test_a_changed_host_key_is_refused(make, hosts):
    hosts[0].server.stop()
    hosts[0].server.regenerate_host_key()  # known_hosts still pins the old key
    hosts[0].server.start()
    with pytest.raises(ProviderAuthError, match="host key"):
        await make(which=[hosts[0]]).list_instances()
    provider = make(which=hosts[:2])
    await claim(provider, hosts[1])
    assert [i.provider_id for i in await provider.list_instances()] == [hosts[1].id]
    with pytest.raises(ProviderAuthError):
        await claim(provider, hosts[0])
    assert not hosts[0].claim_file.exists()


async def test_a_missing_known_hosts_file_or_key_is_an_auth_error(hosts, tmp_path):
    missing = SshHostsProvider(
        [hosts[0].spec], pool="sdxl", known_hosts=tmp_path / "nope", instance_root="/x"
    )
    with pytest.raises(ProviderAuthError, match="known_hosts"):
        await missing.list_instances()
    spec = HostSpec("127.0.0.1", port=hosts[0].server.port, key=tmp_path / "no-key")
    no_key = SshHostsProvider(
        [spec], pool="sdxl", known_hosts=hosts[0].server.known_hosts, instance_root="/x"
    )
    with pytest.raises(ProviderAuthError, match="no-key"):
        await no_key.list_instances()
