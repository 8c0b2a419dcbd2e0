"""A `kind = "ssh"` pool end to end: `pool serve` claims real sshd "hosts", `pool destroy-all`
releases them, and a host claimed by another pool is never touched."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from poolrun import CLI, wait_until

from sshd import SshServer

CLAIM = ".comfyfleet/claim"


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[tuple[SshServer, Path]]]:
    made: list[tuple[SshServer, Path]] = []
    try:
        for i in range(3):
            base = tmp_path / f"h{i}"
            (base / "sshd").mkdir(parents=True)
            home = base / "home"
            home.mkdir()
            server = SshServer(base / "sshd")
            server.extra_options["SetEnv"] = f"HOME={home}"
            server.start()
            made.append((server, home))
        yield made
    finally:
        for server, _ in made:
            server.stop()


@pytest.fixture
def silent_git() -> Iterator[str]:
    """A git URL whose server accepts connections and never answers: the hosts' provisions
    stay in `provisioning` (until their deadline) while the test looks at the claims."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/ComfyUI.git"
    finally:
        sock.close()


def pool_config(tmp_path: Path, servers: list[tuple[SshServer, Path]], repo: str) -> Path:
    known = tmp_path / "known_hosts"
    known.write_text("".join(s.known_hosts.read_text() for s, _ in servers))
    (tmp_path / "manifest.toml").write_text(
        f'version = 1\n[comfyui]\nrepo = "{repo}"\nref = "v1"\n'
    )
    hosts = "".join(
        f'[[provider.hosts]]\nhost = "127.0.0.1"\nport = {s.port}\nuser = "{s.user}"\n'
        f'key = "{s.client_key}"\n'
        for s, _ in servers
    )
    config = tmp_path / "POOL.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [pool]
            name = "own"
            min_ready = 2
            max_instances = 3
            manifest = "manifest.toml"
            instance_root = "{tmp_path / "workspace"}"
            tick = "0.3s"
            backoff = "0.2s"
            backoff_max = "1s"
            [provider]
            kind = "ssh"
            known_hosts = "known_hosts"
            """
        )
        + hosts
    )
    return config


def claims(servers: list[tuple[SshServer, Path]]) -> list[dict | None]:
    out = []
    for _, home in servers:
        f = home / CLAIM
        out.append(json.loads(f.read_text()) if f.exists() else None)
    return out


def test_ssh_pool_claims_hosts_and_destroy_all_releases_only_its_own(
    tmp_path: Path, servers: list[tuple[SshServer, Path]], silent_git: str
) -> None:
    config = pool_config(tmp_path, servers, silent_git)
    # the third host is held by another pool: never ours, never released by us
    other = {"label": "comfyfleet-other-0123456789ab", "pool": "other"}
    (servers[2][1] / ".comfyfleet").mkdir()
    (servers[2][1] / CLAIM).write_text(json.dumps(other) + "\n")

    log = (tmp_path / "serve.log").open("wb")
    serve = subprocess.Popen(
        [*CLI, "pool", "serve", "--config", str(config)], stdout=subprocess.DEVNULL, stderr=log
    )
    try:

        def status() -> dict:
            out = subprocess.run(
                [*CLI, "pool", "status", "--config", str(config), "--json"],
                capture_output=True, text=True, timeout=60, check=True,
            )  # fmt: skip
            return json.loads(out.stdout)

        def both_claimed() -> bool:
            c = claims(servers)
            states = sorted(i["state"] for i in status()["instances"])
            return bool(c[0] and c[1] and states == ["provisioning", "provisioning"])

        wait_until(both_claimed, 60, "both free hosts to be claimed")
        doc = status()
        c = claims(servers)
        assert {i["label"] for i in doc["instances"]} == {c[0]["label"], c[1]["label"]}
        assert {i["provider_id"] for i in doc["instances"]} == {
            f"127.0.0.1:{servers[0][0].port}",
            f"127.0.0.1:{servers[1][0].port}",
        }
        assert claims(servers)[2] == other

        out = subprocess.run(
            [*CLI, "pool", "destroy-all", "--config", str(config), "--yes"],
            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert claims(servers) == [None, None, other]
        assert {i["state"] for i in status()["instances"]} == set()
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=10) == 130
        assert claims(servers) == [None, None, other]  # draining: serve claimed nothing again
    finally:
        if serve.poll() is None:
            serve.kill()
        log.close()
    assert "Traceback" not in (tmp_path / "serve.log").read_text(), sys.stderr
