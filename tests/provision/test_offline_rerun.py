"""A ready root provisions again with no network at all: nothing missing, nothing requested."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from comfyfleet.manifest import load_manifest
from comfyfleet.provisioning import provision
from comfyfleet.testing.demo_fixture import build_demo, write_manifest
from comfyfleet.testing.modelserver import ModelServer


class Tripwire:
    """Listens where the model server was and counts every connection anyone makes."""

    def __init__(self, ports: list[int]) -> None:
        self.connections = 0
        self._stop = threading.Event()
        self._socks = []
        for port in ports:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen(16)
            sock.settimeout(0.1)
            self._socks.append(sock)
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            for sock in self._socks:
                try:
                    conn, _ = sock.accept()
                except TimeoutError:
                    continue
                self.connections += 1
                conn.close()  # refuse quickly: a caller fails fast instead of waiting

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for sock in self._socks:
            sock.close()


async def test_a_ready_root_provisions_again_with_the_model_server_and_repos_gone(
    root: Path, venv_python: Path, tmp_path: Path, point_sources_at
):
    server = ModelServer()  # this test's own: it is stopped half-way
    server.start_in_thread()
    point_sources_at(server)
    try:
        world = build_demo(tmp_path / "world", server, python=str(venv_python))
    except BaseException:
        server.stop_thread()
        raise
    # ComfyUI pinned by its full commit, the node by an abbreviated one, as manifests do.
    world.manifest["comfyui"]["ref"] = world.comfyui.commit
    world.manifest["nodes"][0]["ref"] = world.node.commit[:10]
    write_manifest(world.manifest_path, world.manifest)
    manifest = load_manifest(world.manifest_path)
    try:
        first = await provision(manifest, root)
    finally:
        ports = [server.port, server.cdn_port]
        server.stop_thread()
    assert first.ok, first.reason

    tripwire = Tripwire(ports)
    (world.workdir / "repos").rename(tmp_path / "repos-unreachable")  # a git fetch would fail
    try:
        second = await provision(manifest, root)
    finally:
        tripwire.close()

    assert second.ok, second.reason
    assert tripwire.connections == 0
    assert {f["status"] for f in second.to_json()["files"]} == {"skipped"}
    assert [n.status for n in second.nodes] == ["unchanged"]
    assert second.comfyui is not None and second.comfyui.action == "adopted"
