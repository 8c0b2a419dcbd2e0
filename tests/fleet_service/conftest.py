"""Fixtures: an sshd per test whose sessions carry the instance environment, one Unix user
per rented machine, the Vast double pointing its instances' SSH at that sshd, one demo world.

The instance environment (sshd ``SetEnv``): no package index, the model server's endpoints
(as a rented machine's image would set them), and git's ``safe.directory`` so every instance
user may clone the one demo world's repositories.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fleet"))

from vastdouble import VastDouble

from comfyfleet.fleet.agent import Endpoint
from comfyfleet.fleet.store import InstanceRow
from comfyfleet.testing.demo_fixture import DemoWorld, build_demo
from comfyfleet.testing.modelserver import ModelServer
from sshd import SSHD, SshServer
from unixusers import make_user, processes_of, remove_user


@pytest.fixture
def base_dir() -> Iterator[Path]:
    """A world-traversable directory for homes, the sshd and the demo world."""
    path = Path("/tmp") / f"comfyfleet-svc-{uuid.uuid4().hex[:8]}"
    path.mkdir(mode=0o755)
    (path / "home").mkdir(mode=0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def sshd(base_dir: Path, server: ModelServer) -> Iterator[SshServer]:
    """A real OpenSSH sshd; every session gets the instance environment."""
    if not Path(SSHD).exists() or os.geteuid() != 0:  # pragma: no cover
        pytest.fail("these tests need OpenSSH sshd and root (.ci/run provides both)")
    root = base_dir / "sshd"
    root.mkdir()
    srv = SshServer(root)
    srv.addresses = ["127.0.0.1", "127.0.0.2"]  # an ssh pool's two "hosts" on one sshd
    srv.pin_host_key()
    env = {
        "PIP_NO_INDEX": "1",
        **server.endpoint_env(),
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "safe.directory",
        "GIT_CONFIG_VALUE_0": "*",
    }
    srv.extra_options["AuthorizedKeysFile"] = ".ssh/authorized_keys"
    srv.extra_options["SetEnv"] = " ".join(f"{k}={v}" for k, v in env.items())
    srv.extra_options["Subsystem"] = "sftp internal-sftp"
    srv.start()
    yield srv
    srv.stop()


@dataclass
class Machine:
    """One 'rented machine': a Unix user with its own home, reached through the sshd."""

    user: str
    uid: int
    home: Path

    def processes(self) -> list[psutil.Process]:
        """Every process running as this user."""
        return processes_of(self.uid)


@dataclass
class Machines:
    """Unix users made on demand: one per provider id (the Vast seam) or per host."""

    sshd: SshServer
    base_dir: Path
    made: dict[str, Machine] = field(default_factory=dict)

    def make(self, key: str) -> Machine:
        """The machine for ``key`` (made on first use)."""
        if key in self.made:
            return self.made[key]
        made = make_user(self.base_dir / "home", self.sshd.client_key.with_suffix(".pub"), "cfs")
        # one demo world for every instance user (its repositories are root's)
        gitconfig = made.home / ".gitconfig"
        gitconfig.write_text("[safe]\n\tdirectory = *\n")
        os.chown(gitconfig, made.uid, made.gid)
        machine = Machine(made.user, made.uid, made.home)
        self.made[key] = machine
        return machine

    def endpoint_for(self, row: InstanceRow) -> Endpoint:
        """The seam for the Vast double: each provider id logs in as its own user."""
        assert row.provider_id is not None
        machine = self.make(row.provider_id)
        return Endpoint("127.0.0.1", self.sshd.port, machine.user, self.sshd.client_key)

    def cleanup(self) -> None:
        for m in self.made.values():
            remove_user(m.user, m.uid)


@pytest.fixture
def machines(sshd: SshServer, base_dir: Path) -> Iterator[Machines]:
    """Unix users as rented machines; killed and deleted at teardown."""
    ms = Machines(sshd, base_dir)
    yield ms
    ms.cleanup()


@pytest.fixture
def world(server: ModelServer, base_dir: Path) -> DemoWorld:
    """One demo world (model server, stand-in ComfyUI, a node) every instance user can read."""
    w = build_demo(base_dir / "world", server)
    subprocess.run(["chmod", "-R", "a+rX", str(base_dir / "world")], check=True)
    return w


@pytest.fixture
def double(sshd: SshServer) -> Iterator[VastDouble]:
    """The Vast double; a running instance's SSH is the test's sshd."""
    d = VastDouble(ssh_endpoint=lambda _rec: ("127.0.0.1", sshd.port))
    d.add_offers(8)
    d.start_in_thread()
    try:
        yield d
    finally:
        d.stop_thread()
