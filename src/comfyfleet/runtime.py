"""Start, adopt, stop and check ComfyUI — "ready" judged by ComfyUI's own API.

ComfyUI runs in its own session (``start_new_session``) so it outlives ``provision`` (the old
script's ``cleanup_on_exit`` killed it). Its PID file records the process start time and
command line: a PID file whose process is gone, or whose PID now belongs to another program,
is stale — it never makes ``start`` refuse or ``stop`` kill an unrelated process.

Ready means (reference/provisioning_anchors.md §3.3, §5.7): ``GET /system_stats`` answers and
lists a CUDA device (unless ``--cpu``), every provisioned model is listed by
``GET /models/<key>``, and every required node class answers non-empty at
``GET /object_info/<Class>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from comfyfleet.errors import RuntimeFailure
from comfyfleet.events import STATE_DIR, write_atomic

if TYPE_CHECKING:
    import aiohttp

PID_FILE = "comfyui.pid"
LOG_FILE = "comfyui.log"
#: seconds from spawn to a first answer of /system_stats (real ComfyUI imports torch: slow)
START_TIMEOUT = 300.0
#: seconds to keep re-checking readiness after ComfyUI answers (file listings settle)
READY_GRACE = 10.0
STOP_GRACE = 15.0
_POLL = 0.2

# Popen objects of children we started, kept so they are not reported as leaked when collected
_children: list[subprocess.Popen[bytes]] = []


@dataclass
class PidRecord:
    """The content of ``ROOT/.comfyfleet/comfyui.pid`` (JSON)."""

    pid: int
    host: str
    port: int
    argv: list[str]
    cwd: str
    started_at: float
    #: kernel start time of the process (``/proc/<pid>/stat`` field 22), None where unknown
    start_ticks: int | None = None
    cpu: bool = False
    #: what the running ComfyUI was started with (changed nodes or commit → restart)
    fingerprint: str = ""

    def to_json(self) -> str:
        """Serialised form."""
        return json.dumps(self.__dict__, indent=1) + "\n"


@dataclass
class Expectations:
    """What ComfyUI must show before it is ready."""

    #: (folder key, filename relative to the folder) of every provisioned model
    models: list[tuple[str, str]] = field(default_factory=list)
    #: node classes that must load (critical nodes)
    classes: list[str] = field(default_factory=list)
    #: node classes whose absence only warns (non-critical nodes)
    optional_classes: list[str] = field(default_factory=list)
    need_cuda: bool = True


@dataclass
class ReadyReport:
    """The outcome of a readiness check."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    devices: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        """True when nothing is missing."""
        return not self.problems


@dataclass
class RuntimeInfo:
    """A running ComfyUI as ``start`` left it."""

    pid: int
    port: int
    host: str
    ready: bool
    #: ``started``, ``adopted`` (already running and healthy) or ``restarted``
    action: str
    report: ReadyReport = field(default_factory=ReadyReport)

    def to_json(self) -> dict[str, Any]:
        """The ``comfyui`` object of the provision --json document."""
        return {
            "pid": self.pid,
            "port": self.port,
            "ready": self.ready,
            "action": self.action,
            "problems": self.report.problems,
            "warnings": self.report.warnings,
        }


# --- processes -------------------------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start ticks) from /proc, or None if there is no such process (or no /proc)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # the command name (field 2) may contain spaces and parentheses: split after the last ')'
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[19])


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def pid_alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie does not count); reaps it if it is our own child."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    if Path("/proc").is_dir():
        stat = _proc_stat(pid)
        return stat is not None and stat[0] not in {"Z", "X"}
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_our_process(record: PidRecord) -> bool:
    """True if the PID file's process is alive and is still the ComfyUI we started."""
    if not pid_alive(record.pid):
        return False
    if not Path("/proc").is_dir():
        return True  # no way to check identity here; liveness is all we have
    stat = _proc_stat(record.pid)
    if record.start_ticks is not None and stat is not None and stat[1] != record.start_ticks:
        return False  # the pid was reused by another process
    cmd = _cmdline(record.pid)
    return any(a.endswith("main.py") for a in cmd)


def pid_path(root: Path) -> Path:
    """``ROOT/.comfyfleet/comfyui.pid``."""
    return root / STATE_DIR / PID_FILE


def log_path(root: Path) -> Path:
    """``ROOT/.comfyfleet/comfyui.log``."""
    return root / STATE_DIR / LOG_FILE


def read_pid_file(root: Path) -> PidRecord | None:
    """The PID file's record, or None when absent or unreadable."""
    try:
        data = json.loads(pid_path(root).read_text())
        return PidRecord(**data)
    except (FileNotFoundError, ValueError, TypeError):
        return None


def _remove_pid_file(root: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        pid_path(root).unlink()


def log_tail(root: Path, lines: int = 25) -> str:
    """The last lines of ``comfyui.log``."""
    try:
        text = log_path(root).read_text(errors="replace")
    except FileNotFoundError:
        return "(no comfyui.log)"
    return "\n".join(text.splitlines()[-lines:])


def port_in_use(host: str, port: int) -> bool:
    """True if something accepts connections on ``host:port``."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def wants_cpu(args: Sequence[str]) -> bool:
    """True if ComfyUI's args ask for CPU mode (then no CUDA device is expected)."""
    return "--cpu" in args


# --- HTTP checks -----------------------------------------------------------------------------


async def _get_json(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    import aiohttp

    async with session.get(url) as resp:
        try:
            body = await resp.json(content_type=None)
        except (ValueError, aiohttp.ContentTypeError):
            body = None
        return resp.status, body


async def system_stats(host: str, port: int, timeout: float = 2.0) -> dict[str, Any] | None:
    """``GET /system_stats``, or None when ComfyUI does not answer."""
    # The standard library's client, in a thread: `comfyfleet status` is run over SSH on many
    # machines and must not pay for importing aiohttp.
    return await asyncio.to_thread(_system_stats, host, port, timeout)


def _system_stats(host: str, port: int, timeout: float) -> dict[str, Any] | None:
    import http.client

    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/system_stats")
        resp = conn.getresponse()
        body = resp.read(1 << 20)
        if resp.status != 200:
            return None
        doc = json.loads(body)
    except (OSError, http.client.HTTPException, ValueError):
        return None
    finally:
        conn.close()
    return doc if isinstance(doc, dict) else None


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def check_ready(host: str, port: int, expect: Expectations) -> ReadyReport:
    """Ask ComfyUI whether it sees the GPU, every provisioned model and every required class."""
    import aiohttp

    report = ReadyReport()
    base = f"http://{_hostport(host, port)}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        try:
            status, stats = await _get_json(s, f"{base}/system_stats")
            if status != 200 or not isinstance(stats, dict):
                report.problems.append(f"GET /system_stats answered {status}")
                return report
            report.devices = list(stats.get("devices") or [])
            if expect.need_cuda and not any(d.get("type") == "cuda" for d in report.devices):
                names = [d.get("name") for d in report.devices] or "none"
                report.problems.append(
                    f"ComfyUI lists no CUDA device (devices: {names}); check the NVIDIA driver "
                    "and that torch is a CUDA build, or add --cpu to comfyui.args"
                )
            by_key: dict[str, list[str]] = {}
            for key, filename in expect.models:
                by_key.setdefault(key, []).append(filename)
            for key, filenames in sorted(by_key.items()):
                status, listed = await _get_json(s, f"{base}/models/{quote(key)}")
                if status == 404:
                    report.problems.append(
                        f"ComfyUI does not know the model folder {key!r} (GET /models/{key} is "
                        "404): the custom node that registers it did not load"
                    )
                    continue
                visible = set(listed or [])
                for name in filenames:
                    if name not in visible:
                        report.problems.append(
                            f"ComfyUI does not list {key}/{name} (GET /models/{key})"
                        )
            for cls, problems in (
                (expect.classes, report.problems),
                (expect.optional_classes, report.warnings),
            ):
                for name in cls:
                    status, info = await _get_json(s, f"{base}/object_info/{quote(name)}")
                    if status != 200 or not info:
                        problems.append(
                            f"node class {name} is not loaded (GET /object_info/{name} is empty); "
                            "see comfyui.log for IMPORT FAILED"
                        )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            report.problems.append(f"ComfyUI stopped answering: {exc!r}")
    return report


# --- start / stop / status ----------------------------------------------------------------------


async def start(
    *,
    root: Path,
    comfyui_dir: Path,
    python: Path,
    args: Sequence[str],
    host: str,
    port: int,
    expect: Expectations,
    fingerprint: str = "",
    restart: bool = False,
    start_timeout: float = START_TIMEOUT,
    on_info: Callable[[str], None] = lambda _msg: None,
) -> RuntimeInfo:
    """Start ComfyUI (or adopt the healthy one already running) and wait until it is ready.

    Raises :class:`RuntimeFailure` when the port is taken by another program, ComfyUI exits
    during startup (with the tail of comfyui.log), does not answer in time, or is not ready.
    """
    record = read_pid_file(root)
    action = "started"
    if record is not None and is_our_process(record):
        same = record.port == port and record.argv[2:] == list(args) and not restart
        same = same and (not fingerprint or record.fingerprint == fingerprint)
        if same and await system_stats(record.host, record.port) is not None:
            on_info(f"ComfyUI already running (pid {record.pid}) and healthy: adopted")
            report = await _settle(record.host, record.port, expect, lambda: pid_alive(record.pid))
            return RuntimeInfo(
                record.pid, record.port, record.host, report.ready, "adopted", report
            )
        on_info(f"restarting ComfyUI (pid {record.pid}): nodes, code or args changed")
        await stop(root)
        action = "restarted"
    elif record is not None:
        on_info(f"stale PID file (pid {record.pid} is not our ComfyUI): ignored")
        _remove_pid_file(root)

    if port_in_use(host, port):
        raise RuntimeFailure(
            f"port {port} on {host} is already in use by another process",
            hint="stop that process or choose another --port in comfyui.args "
            f"(`ss -ltnp 'sport = :{port}'` shows it)",
        )
    argv = [str(python), "main.py", *args]
    log_file = log_path(root)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as out:
        out.write(
            f"\n===== comfyfleet: starting {' '.join(argv)} at {time.ctime()} =====\n".encode()
        )
        out.flush()
        proc = subprocess.Popen(
            argv,
            cwd=comfyui_dir,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    _children.append(proc)
    stat = _proc_stat(proc.pid)
    record = PidRecord(
        pid=proc.pid,
        host=host,
        port=port,
        argv=argv,
        cwd=str(comfyui_dir),
        started_at=time.time(),
        start_ticks=stat[1] if stat else None,
        cpu=wants_cpu(args),
        fingerprint=fingerprint,
    )
    write_atomic(pid_path(root), record.to_json())
    on_info(
        f"ComfyUI started (pid {proc.pid}), waiting for http://{_hostport(host, port)}/system_stats"
    )

    deadline = time.monotonic() + start_timeout
    while True:
        if proc.poll() is not None:
            _remove_pid_file(root)
            raise RuntimeFailure(
                f"ComfyUI exited with code {proc.returncode} during startup; "
                f"last lines of {log_file}:\n{log_tail(root)}",
                hint="fix the error shown in comfyui.log and run provision (or start) again",
            )
        if await system_stats(host, port, timeout=1.0) is not None:
            break
        if time.monotonic() > deadline:
            raise RuntimeFailure(
                f"ComfyUI (pid {proc.pid}) did not answer /system_stats "
                f"within {start_timeout:.0f}s; "
                f"last lines of {log_file}:\n{log_tail(root)}",
                hint="it is left running; see comfyui.log, or `comfyfleet stop` it",
            )
        await asyncio.sleep(_POLL)
    report = await _settle(host, port, expect, lambda: proc.poll() is None)
    return RuntimeInfo(proc.pid, port, host, report.ready, action, report)


async def _settle(
    host: str, port: int, expect: Expectations, alive: Callable[[], bool]
) -> ReadyReport:
    """Re-check readiness for a short grace period (listings settle), return the last report."""
    deadline = time.monotonic() + READY_GRACE
    while True:
        report = await check_ready(host, port, expect)
        if report.ready or time.monotonic() > deadline or not alive():
            return report
        await asyncio.sleep(_POLL * 2)


async def stop(root: Path, *, grace: float = STOP_GRACE) -> dict[str, Any]:
    """Stop the ComfyUI of ``root`` (process group: TERM, then KILL after ``grace``).

    A stale PID file (dead or reused pid) is removed without signalling anything.
    Returns ``{"stopped", "pid", "stale", "killed"}``.
    """
    record = read_pid_file(root)
    if record is None:
        return {"stopped": False, "pid": None, "stale": False, "killed": False}
    if not is_our_process(record):
        _remove_pid_file(root)
        return {"stopped": False, "pid": record.pid, "stale": True, "killed": False}
    killed = False
    _signal_group(record.pid, signal.SIGTERM)
    if not await _wait_gone(record.pid, grace):
        _signal_group(record.pid, signal.SIGKILL)
        killed = True
        await _wait_gone(record.pid, 5.0)
    _remove_pid_file(root)
    return {"stopped": True, "pid": record.pid, "stale": False, "killed": killed}


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        # we started it as a session leader: its group is its own; never signal ours
        if pgid == pid and pgid != os.getpgrp():
            os.killpg(pgid, sig)
        else:
            os.kill(pid, sig)


async def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def status(root: Path) -> dict[str, Any]:
    """``{"running", "healthy", "pid", "port", "uptime_s"}`` for ``comfyfleet status``."""
    record = read_pid_file(root)
    if record is None or not is_our_process(record):
        return {
            "running": False,
            "healthy": False,
            "pid": None,
            "port": record.port if record else None,
            "uptime_s": None,
            "stale_pid_file": record is not None,
        }
    stats = await system_stats(record.host, record.port)
    devices = (stats or {}).get("devices") or []
    return {
        "running": True,
        "healthy": stats is not None,
        "pid": record.pid,
        "port": record.port,
        "host": record.host,
        "uptime_s": round(time.time() - record.started_at, 1),
        "devices": [d.get("name") for d in devices],
        "comfyui_version": ((stats or {}).get("system") or {}).get("comfyui_version"),
    }
