"""Hostile servers: the model server's faults plus raw sockets that misbehave below HTTP."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from comfyfleet.download import DownloadReport, download_all
from comfyfleet.events import RunLog
from comfyfleet.manifest import Manifest, parse_manifest

#: quick settings: no long waits between retries in tests
FAST: dict[str, Any] = {
    "concurrency": 2,
    "connections_per_file": 2,
    "stall_timeout": "5s",
    "min_speed": "1KiB",
    "segment_size": "1MiB",
}


def manifest(models: list[dict[str, Any]], **download: Any) -> Manifest:
    return parse_manifest({"download": {**FAST, **download}, "models": models})


def manifest_toml(path: Path, models: list[dict[str, Any]], **download: Any) -> Path:
    """Write a TOML manifest (for the CLI) and return its path."""
    lines = ["version = 1", "[download]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in {**FAST, **download}.items()]
    for m in models:
        lines.append("[[models]]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in m.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


async def run(m: Manifest, root: Path) -> DownloadReport:
    log = RunLog(root, "download")
    try:
        return await download_all(m, root, log)
    finally:
        log.close()


def state_files(root: Path) -> dict[str, str]:
    """Every file comfyfleet wrote under ROOT/.comfyfleet, by name."""
    d = root / ".comfyfleet"
    return {p.name: p.read_text() for p in d.iterdir() if p.is_file()} if d.exists() else {}


def events(root: Path, name: str | None = None) -> list[dict[str, Any]]:
    lines = (root / ".comfyfleet" / "events.jsonl").read_text().splitlines()
    evs = [json.loads(line) for line in lines]
    return [e for e in evs if name is None or e["event"] == name]


class RawServer:
    """A TCP listener on loopback that never speaks HTTP: it counts connections and stays mute.

    ``full_backlog``: it never accepts, and one parked connection fills its queue, so every
    further connect hangs in the SYN stage (a host that drops packets).
    """

    def __init__(self, *, full_backlog: bool = False) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        if full_backlog:
            self.sock.listen(0)
            filler = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            self._held.append(filler)
        else:
            self.sock.listen(64)
            self.sock.settimeout(0.1)
            self._thread = threading.Thread(target=self._accept, daemon=True)
            self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            self._held.append(conn)  # read nothing, answer nothing, close nothing

    def close(self) -> None:
        self._stop.set()
        for c in self._held:
            c.close()
        self.sock.close()


@pytest.fixture
def silent_server() -> Iterator[RawServer]:
    srv = RawServer()
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture
def blackhole_server() -> Iterator[RawServer]:
    srv = RawServer(full_backlog=True)
    try:
        yield srv
    finally:
        srv.close()


#: A host that is not loopback by the token rule (`sources.auth.is_loopback`) yet whose traffic
#: never leaves this machine: Linux connects 0.0.0.0 (INADDR_ANY) to the local host. It stands in
#: for a LAN mirror without sending a packet to any LAN address.
NOT_LOOPBACK_BY_NAME = "0.0.0.0"
