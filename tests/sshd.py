"""A real OpenSSH sshd on 127.0.0.1 for tests and benchmarks (no mocks).

Started as the current user with generated host and client keys in a temp dir; restartable
on the same port and host key, and able to kill every client connection (the per-connection
sshd children) to simulate network cuts.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil

SSHD = "/usr/sbin/sshd"


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (sshd cannot bind port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = "") -> None:
    """Poll ``predicate`` until true; AssertionError after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what or predicate}")


def _keygen(path: Path, kind: str = "ed25519") -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "", "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
    )


class SshServer:
    """One sshd: ``start()``, ``stop()``, ``restart()``, ``kill_connections()``."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = root
        #: more sshd_config options (e.g. SetEnv), applied at the next start()
        self.extra_options: dict[str, str] = {}
        #: the loopback addresses it listens on (more than one: "hosts" that share one sshd);
        #: set before start(), then pin_host_key()
        self.addresses = ["127.0.0.1"]
        self.port = port or free_port()
        self.user = os.environ.get("USER") or psutil.Process().username()
        self.host_key = root / "host_ed25519"
        self.client_key = root / "client_ed25519"
        self.known_hosts = root / "known_hosts"
        self.pidfile = root / "sshd.pid"
        self.proc: subprocess.Popen | None = None
        if not self.host_key.exists():
            _keygen(self.host_key)
            _keygen(self.client_key)
        (root / "authorized_keys").write_text((root / "client_ed25519.pub").read_text())
        self.pin_host_key()

    def pin_host_key(self) -> None:
        """Write a known_hosts file that trusts this server's host key."""
        kind, blob = self.host_key.with_suffix(".pub").read_text().split()[:2]
        self.known_hosts.write_text(
            "".join(f"[{a}]:{self.port} {kind} {blob}\n" for a in self.addresses)
        )

    def regenerate_host_key(self) -> None:
        """Give the server a new host key (as a reinstalled machine would have)."""
        for p in (self.host_key, self.host_key.with_suffix(".pub")):
            p.unlink()
        _keygen(self.host_key)

    def start(self) -> None:
        """Start sshd and wait until it accepts connections."""
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # Debian's privsep directory
        opts = {
            "Port": str(self.port),
            "HostKey": str(self.host_key),
            "PidFile": str(self.pidfile),
            "AuthorizedKeysFile": str(self.root / "authorized_keys"),
            "UsePAM": "no",
            "StrictModes": "no",
            "PasswordAuthentication": "no",
            "KbdInteractiveAuthentication": "no",
            "PermitRootLogin": "prohibit-password",
            "MaxStartups": "100",
            "MaxSessions": "100",
            "LogLevel": "ERROR",
            **self.extra_options,
        }
        argv = [SSHD, "-D", "-e", "-f", "/dev/null"]
        for address in self.addresses:
            argv += ["-o", f"ListenAddress={address}"]
        for k, v in opts.items():
            argv += ["-o", f"{k}={v}"]
        with (self.root / "sshd.log").open("ab") as log:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log
            )
        wait_until(self._listening, 10, what="sshd to listen")

    def _listening(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            log = (self.root / "sshd.log").read_text(errors="replace")
            raise RuntimeError(f"sshd exited with {self.proc.returncode}: {log[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def connections(self) -> list[psutil.Process]:
        """The per-connection sshd processes (children of the listener)."""
        if self.proc is None:
            return []
        try:
            return psutil.Process(self.proc.pid).children(recursive=False)
        except psutil.NoSuchProcess:
            return []

    def kill_connections(self) -> int:
        """SIGKILL every client connection's sshd process; returns how many."""
        victims = self.connections()
        for p in victims:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        return len(victims)

    def stop(self) -> None:
        """Stop the listener and every connection it spawned."""
        if self.proc is None:
            return
        self.kill_connections()
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self, down_for: float = 0.0) -> None:
        """Stop, stay down ``down_for`` seconds, start again on the same port and key."""
        self.stop()
        if down_for:
            time.sleep(down_for)
        self.start()


def ssh_opts(server: SshServer, key: Path) -> list[str]:
    """OpenSSH client options that log in to ``server`` with ``key`` only, non-interactively."""
    return [
        "-i", str(key), "-p", str(server.port), "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
        "-o", f"UserKnownHostsFile={server.known_hosts}", "-o", "StrictHostKeyChecking=yes",
        "-o", "ConnectTimeout=10",
    ]  # fmt: skip


async def logs_in(server: SshServer, key: Path, user: str) -> bool:
    """Whether ``key`` logs in to ``server`` as ``user`` (real ssh, a command that echoes)."""
    import asyncio

    proc = await asyncio.create_subprocess_exec(
        "ssh", *ssh_opts(server, key), f"{user}@127.0.0.1", "echo", "in",
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    out, _ = await proc.communicate()
    return proc.returncode == 0 and out.strip() == b"in"


async def get_through_tunnel(url: str, proc) -> dict:
    """GET ``url`` (JSON) once the ``ssh -L`` process ``proc`` forwards it."""
    import asyncio

    import aiohttp

    async with aiohttp.ClientSession() as http:
        for _ in range(300):  # until the forward listens
            assert proc.returncode is None, "the tunnel exited"
            try:
                async with http.get(url) as r:
                    return await r.json()
            except aiohttp.ClientError:
                await asyncio.sleep(0.05)
    raise AssertionError("the tunnel never answered")
