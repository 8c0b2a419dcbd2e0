"""Fixtures: a real OpenSSH sshd on 127.0.0.1 and follow targets pointing at it."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from comfyfleet.logstream import FollowTarget, SshTarget
from sshd import SSHD, SshServer


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[SshServer]:
    """A running sshd with its own host and client keys; stopped after the test."""
    if not Path(SSHD).exists() or shutil.which("ssh-keygen") is None:  # pragma: no cover
        pytest.skip("OpenSSH server not installed (.ci/run installs it)")
    root = tmp_path / "sshd"
    root.mkdir()
    server = SshServer(root)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def remote_log(tmp_path: Path) -> Path:
    """The path the follower reads (the 'remote' machine is this one, over SSH)."""
    d = tmp_path / "remote"
    d.mkdir()
    return d / "provision.log"


@pytest.fixture
def target_for(sshd: SshServer, tmp_path: Path) -> Callable[..., FollowTarget]:
    """Build a FollowTarget for ``path`` through the fixture's sshd."""

    def build(path: Path, *, output: Path | None = None, **ssh) -> FollowTarget:
        options = {
            "host": "127.0.0.1",
            "port": sshd.port,
            "user": sshd.user,
            "key": sshd.client_key,
            "known_hosts": sshd.known_hosts,
            **ssh,
        }
        return FollowTarget(SshTarget(**options), str(path), output or tmp_path / "local.log")

    return build
