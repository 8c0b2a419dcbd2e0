"""A throwaway PostgreSQL cluster for tests: initdb + pg_ctl on 127.0.0.1, a free port.

Debian puts the server binaries in /usr/lib/postgresql/<version>/bin (not on PATH). initdb
refuses to run as root, so when we are root the cluster belongs to the ``postgres`` user
(``runuser -u postgres``), in a ``mkdtemp`` directory chowned to it (pytest's tmp_path is
mode 0700 under root's and unreadable to that user).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


def pg_bin() -> Path | None:
    """The newest installed server bin directory, or None when PostgreSQL is not installed."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PgCluster:
    """A running cluster; :attr:`url` is a ``postgresql://`` URL of its ``postgres`` database."""

    bindir: Path
    datadir: Path
    port: int
    user: str

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        cmd = list(argv)
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)

    def create_database(self, name: str) -> str:
        """Create database ``name``; return its URL."""
        out = self._run(
            str(self.bindir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-d", "postgres",
            "-v", "ON_ERROR_STOP=1", "-c", f'CREATE DATABASE "{name}"',
        )  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"CREATE DATABASE failed: {out.stderr}")
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "immediate", "stop")
        shutil.rmtree(self.datadir.parent, ignore_errors=True)


def start_cluster() -> PgCluster:
    """initdb a fresh cluster in a temporary directory and start it on a free loopback port."""
    bindir = pg_bin()
    if bindir is None:
        raise RuntimeError(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): "
            "apt-get install postgresql, or run .ci/run"
        )
    user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    top = Path(tempfile.mkdtemp(prefix="comfyfleet-pg-"))
    datadir = top / "data"
    if os.geteuid() == 0:
        entry = pwd.getpwnam(user)
        os.chown(top, entry.pw_uid, entry.pw_gid)
    cluster = PgCluster(bindir=bindir, datadir=datadir, port=_free_port(), user=user)
    init = cluster._run(
        str(bindir / "initdb"), "-D", str(datadir), "-U", user, "-A", "trust", "-E", "UTF8",
        "--no-sync",
    )  # fmt: skip
    if init.returncode != 0:
        shutil.rmtree(top, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {init.stderr or init.stdout}")
    opts = f"-c listen_addresses=127.0.0.1 -p {cluster.port} -k {top} -c fsync=off"
    start = cluster._run(
        str(bindir / "pg_ctl"), "-D", str(datadir), "-o", opts, "-l", str(top / "log"),
        "-w", "-t", "60", "start",
    )  # fmt: skip
    if start.returncode != 0:
        log = (top / "log").read_text(errors="replace") if (top / "log").exists() else ""
        shutil.rmtree(top, ignore_errors=True)
        raise RuntimeError(f"pg_ctl start failed: {start.stderr}\n{log}")
    return cluster
