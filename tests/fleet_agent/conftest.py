"""Fixtures: a real sshd (as root) and, per test, an instance = its own Unix user and home.

Every instance gets its own home, ``~/.ssh/authorized_keys`` and root, as rented machines
would. sshd sets ``PIP_NO_INDEX=1`` in every session (``SetEnv``), so anything the agent
installs on the instance must come from what it uploaded.
"""

from __future__ import annotations

import os
import pwd
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
        found = []
        for p in psutil.process_iter(["uids"]):
            uids = p.info["uids"]
            if uids is not None and uids.real == self.uid:
                found.append(p)
        return found


def _kill_all(instance: Instance) -> None:
    for _ in range(50):
        procs = instance.processes()
        if not procs:
            return
        for p in procs:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=2)


@pytest.fixture
def make_instance(sshd: SshServer, base_dir: Path) -> Iterator[Callable[[], Instance]]:
    """Create instances (users); each is killed and deleted at teardown."""
    made: list[Instance] = []

    def make() -> Instance:
        user = f"cfa{uuid.uuid4().hex[:8]}"
        subprocess.run(
            ["useradd", "--create-home", "--base-dir", str(base_dir / "home"),
             "--shell", "/bin/sh", "--password", "*", user],
            check=True, capture_output=True,
        )  # fmt: skip
        entry = pwd.getpwnam(user)
        home = Path(entry.pw_dir)
        ssh_dir = home / ".ssh"
        ssh_dir.mkdir(mode=0o700)
        shutil.copy(sshd.client_key.with_suffix(".pub"), ssh_dir / "authorized_keys")
        for p in (ssh_dir, ssh_dir / "authorized_keys"):
            os.chown(p, entry.pw_uid, entry.pw_gid)
        host_key = " ".join(sshd.host_key.with_suffix(".pub").read_text().split()[:2])
        endpoint = Endpoint("127.0.0.1", sshd.port, user, sshd.client_key)
        inst = Instance(user, entry.pw_uid, home, endpoint, host_key)
        made.append(inst)
        return inst

    (base_dir / "home").mkdir(exist_ok=True, mode=0o755)
    yield make
    for inst in made:
        _kill_all(inst)
        subprocess.run(["userdel", "--remove", inst.user], capture_output=True)


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
