"""Fixtures: a real sshd (as root) and, per test, an instance = its own Unix user and home.

Every instance gets its own home, ``~/.ssh/authorized_keys`` and root, as rented machines
would. sshd sets ``PIP_NO_INDEX=1`` in every session (``SetEnv``), so anything the agent
installs on the instance must come from what it uploaded.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from comfyfleet.fleet.agent import Endpoint
from comfyfleet.testing.demo_fixture import DemoWorld, build_demo
from comfyfleet.testing.modelserver import ModelServer
from sshd import SSHD, SshServer
from unixusers import make_user, processes_of, remove_user


@pytest.fixture(scope="session")
def base_dir() -> Iterator[Path]:
    """A world-traversable directory for instance homes and their demo worlds."""
    path = Path("/tmp") / f"comfyfleet-agent-tests-{uuid.uuid4().hex[:8]}"
    path.mkdir(mode=0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def sshd(base_dir: Path) -> Iterator[SshServer]:
    """One sshd for the session; users log in with their own ~/.ssh/authorized_keys."""
    if not Path(SSHD).exists() or os.geteuid() != 0:  # pragma: no cover
        pytest.fail("these tests need OpenSSH sshd and root (.ci/run provides both)")
    root = base_dir / "sshd"
    root.mkdir()
    server = SshServer(root)
    server.extra_options["AuthorizedKeysFile"] = ".ssh/authorized_keys"
    server.extra_options["SetEnv"] = "PIP_NO_INDEX=1"
    server.extra_options["Subsystem"] = "sftp internal-sftp"  # the agent uploads over SFTP
    server.start()
    yield server
    server.stop()


@dataclass
class Instance:
    """One 'rented machine': a Unix user with its own home, reached through the sshd."""

    user: str
    uid: int
    home: Path
    endpoint: Endpoint
    host_key: str

    def processes(self) -> list[psutil.Process]:
        """Every process running as this user."""
        return processes_of(self.uid)


@pytest.fixture
def make_instance(sshd: SshServer, base_dir: Path) -> Iterator[Callable[[], Instance]]:
    """Create instances (users); each is killed and deleted at teardown."""
    made: list[Instance] = []

    def make() -> Instance:
        made_user = make_user(base_dir / "home", sshd.client_key.with_suffix(".pub"), "cfa")
        user, home = made_user.user, made_user.home
        host_key = " ".join(sshd.host_key.with_suffix(".pub").read_text().split()[:2])
        endpoint = Endpoint("127.0.0.1", sshd.port, user, sshd.client_key)
        inst = Instance(user, made_user.uid, home, endpoint, host_key)
        made.append(inst)
        return inst

    (base_dir / "home").mkdir(exist_ok=True, mode=0o755)
    yield make
    for inst in made:
        remove_user(inst.user, inst.uid)


@pytest.fixture
def world_for(server: ModelServer, base_dir: Path) -> Callable[..., DemoWorld]:
    """The demo world (model server, stand-in ComfyUI, a node) readable by an instance."""

    def build(instance: Instance, **kw) -> DemoWorld:
        workdir = base_dir / "worlds" / instance.user
        world = build_demo(workdir, server, **kw)
        # git refuses repositories owned by another user ("dubious ownership")
        subprocess.run(["chown", "-R", f"{instance.user}:", str(workdir)], check=True)
        (base_dir / "worlds").chmod(0o755)
        return world

    return build
