"""``comfyfleet demo --pool``: a local pool of two instances and its dashboard, offline.

On the demo world (:mod:`comfyfleet.testing.demo_fixture`: a local model server, the stand-in
ComfyUI, one custom node) it writes a ``kind = "local"`` pool config and runs the real
``pool serve`` on it as a child process (its own session, so one signal reaches all it
started). Once the dashboard answers, ``dashboard: URL`` and ``token: TOKEN`` go to stdout on
lines of their own; everything else goes to stderr. It leases one instance through the API,
shows its ComfyUI answering, and waits for Ctrl-C or SIGTERM; then it stops ``pool serve``,
destroys the pool's instances (``pool destroy-all``: their ComfyUIs stop, the slots are
freed) and the model server, and exits 0.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import tomli_w

from comfyfleet.errors import ComfyfleetError

#: the pool of the demo: two instances, both kept ready
INSTANCES = 2
#: how long the first lease may wait for an instance to become ready
LEASE_WAIT_S = 600
#: how long ``pool serve`` may take to stop after SIGTERM before it is killed
STOP_GRACE_S = 30


class DemoFailed(ComfyfleetError):
    """The pool demo could not get to a leased, answering instance."""

    exit_code = 1


def _err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _http(
    method: str, url: str, token: str, body: Any = None, timeout: float = 30
) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode("utf-8", "replace")


def write_pool_config(target: Path, manifest: Path, ports: list[int], api_port: int) -> Path:
    """The demo pool's POOL.toml (kind local, two slots under ``target/pool``)."""
    doc = {
        "pool": {
            "name": "demo",
            "min_ready": INSTANCES,
            "max_ready": INSTANCES,
            "max_instances": INSTANCES,
            "max_hourly_spend": 1.0,
            "manifest": str(manifest),
            "tick": "1s",
            "on_release": "destroy",
        },
        "provider": {"kind": "local", "base_dir": str(target / "pool"), "ports": ports},
        "api": {"listen": f"127.0.0.1:{api_port}"},
    }
    path = target / "pool.toml"
    path.write_text(tomli_w.dumps(doc))
    return path


class Stop:
    """Set by SIGINT/SIGTERM: the demo stops what it started and exits 0."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Stop:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, lambda *_: self.event.set())
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True when a stop was asked."""
        return self.event.wait(seconds)


def run_pool_demo(target: Path) -> int:
    """The whole ``demo --pool``; returns the exit code."""
    from comfyfleet.testing.demo_fixture import build_demo, free_port
    from comfyfleet.testing.modelserver import ModelServer

    target.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(16)
    server = ModelServer()
    server.start_in_thread()
    serve: subprocess.Popen[bytes] | None = None
    config: Path | None = None
    env = {**os.environ, **server.endpoint_env(), "COMFYFLEET_API_TOKEN": token}
    with Stop() as stop:
        try:
            world = build_demo(target / "demo-world", server)
            ports = [free_port() for _ in range(INSTANCES)]
            api_port = free_port()
            config = write_pool_config(target, world.manifest_path, ports, api_port)
            base = f"http://127.0.0.1:{api_port}"
            _err(f"comfyfleet demo --pool in {target}")
            _err(f"  model server  {server.base_url}")
            _err(f"  pool config   {config} (kind local, slots on ports {ports})")
            serve = subprocess.Popen(
                [sys.executable, "-m", "comfyfleet", "pool", "serve", "--config", str(config)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=sys.stderr.fileno(),
                start_new_session=True,  # a Ctrl-C reaches us; we stop it in order
            )
            _err(f"  pool serve    pid {serve.pid}")
            if not _wait_page(base, serve, stop):
                return 0
            print(f"dashboard: {base}/", flush=True)
            print(f"token: {token}", flush=True)
            _err("==> leasing one instance through the API (it becomes ready first)")
            if not _lease_and_show(base, token, serve, stop):
                return 0
            _err("==> up: open the dashboard with the token above; Ctrl-C stops everything")
            while not stop.wait(1.0):
                if serve.poll() is not None:
                    raise DemoFailed(f"pool serve ended (exit {serve.returncode})")
            _err("stopping")
            return 0
        finally:
            _shutdown(serve, config, env)
            server.stop_thread()


def _wait_page(base: str, serve: subprocess.Popen[bytes], stop: Stop) -> bool:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if serve.poll() is not None:
            raise DemoFailed(f"pool serve ended before its API answered (exit {serve.returncode})")
        try:
            with urllib.request.urlopen(base + "/", timeout=5) as resp:
                if resp.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        if stop.wait(0.25):
            return False
    raise DemoFailed("the dashboard did not answer within 120 s")


def _lease_and_show(base: str, token: str, serve: subprocess.Popen[bytes], stop: Stop) -> bool:
    deadline = time.monotonic() + LEASE_WAIT_S
    while time.monotonic() < deadline:
        if serve.poll() is not None:
            raise DemoFailed(f"pool serve ended (exit {serve.returncode})")
        status, doc = _http("POST", base + "/v1/leases", token, {"wait_s": 2}, timeout=30)
        if status == 201:
            url = doc.get("url") or ""
            _err(f"  lease {doc['lease_id']} on instance {doc['instance_id']}: {url}")
            status2, stats = _http("GET", url.rstrip("/") + "/system_stats", token, timeout=10)
            if status2 != 200:
                raise DemoFailed(f"the leased ComfyUI at {url} answered {status2}")
            version = (stats.get("system") or {}).get("comfyui_version", "?")
            _err(f"  ComfyUI (stand-in {version}) answers at {url}/system_stats")
            return True
        if status != 503:
            raise DemoFailed(f"POST /v1/leases answered {status}: {doc}")
        if stop.wait(0.5):
            return False
    raise DemoFailed(f"no instance became ready within {LEASE_WAIT_S} s")


def _shutdown(
    serve: subprocess.Popen[bytes] | None, config: Path | None, env: dict[str, str]
) -> None:
    """Stop pool serve, then destroy the pool's instances (ComfyUIs stop, slots freed)."""
    if serve is not None and serve.poll() is None:
        _err("  stopping pool serve")
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait()
    if config is not None and (config.parent / "pool").exists():
        _err("  destroying the pool's instances (pool destroy-all)")
        subprocess.run(
            [sys.executable, "-m", "comfyfleet", "pool", "destroy-all", "--yes",
             "--config", str(config)],
            env=env, stdin=subprocess.DEVNULL, stdout=sys.stderr.fileno(), check=False,
            timeout=120,
        )  # fmt: skip
