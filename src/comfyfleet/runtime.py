"""Start, adopt, stop and check ComfyUI — "ready" judged by ComfyUI's own API.

ComfyUI runs in its own session (``start_new_session``) so it outlives ``provision`` (the old
script's ``cleanup_on_exit`` killed it). Its PID file records the process start time, command
line and working directory: a record whose process is gone, or whose PID now belongs to another
program, is stale — it never makes ``start`` refuse or ``stop`` kill an unrelated process. A
record that cannot be fully validated (garbage, a missing ``start_ticks``) is never trusted to
signal anything: ``stop`` and ``status`` then find ROOT's ComfyUI by its working directory
(``/proc/PID/cwd`` under ROOT) and its command line (``main.py``), never by a port alone —
several ComfyUIs may run on one host.

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
from comfyfleet.lock import holder as lock_holder

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


class PidFileProblem(ValueError):
    """``comfyui.pid`` exists but is not a record comfyfleet can trust (the message says why)."""


#: field → the JSON types it must have (bool is excluded from int explicitly below)
_RECORD_FIELDS: dict[str, tuple[type, ...]] = {
    "pid": (int,), "host": (str,), "port": (int,), "argv": (list,), "cwd": (str,),
    "started_at": (int, float), "start_ticks": (int,),
}  # fmt: skip


def parse_pid_record(text: str) -> PidRecord:
    """A :class:`PidRecord` from the PID file's text; raise :class:`PidFileProblem` unless every
    field is present and well-formed (a record we cannot fully check is never trusted)."""
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):
        raise PidFileProblem("is not JSON") from None
    if not isinstance(doc, dict):
        raise PidFileProblem("is not a JSON object")
    for name, types in _RECORD_FIELDS.items():
        if name not in doc:
            raise PidFileProblem(f"lacks {name} (written by an older comfyfleet, or edited)")
        value = doc[name]
        if isinstance(value, bool) or not isinstance(value, types):
            raise PidFileProblem(f"has a malformed {name}")
    if doc["pid"] <= 1 or doc["start_ticks"] < 0 or not 0 < doc["port"] < 65536:
        raise PidFileProblem("has an impossible pid, port or start_ticks")
    if not doc["argv"] or not all(isinstance(a, str) for a in doc["argv"]):
        raise PidFileProblem("has a malformed argv")
    if not Path(doc["cwd"]).is_absolute():
        raise PidFileProblem("has a relative cwd")
    cpu, fingerprint = doc.get("cpu", False), doc.get("fingerprint", "")
    if not isinstance(cpu, bool) or not isinstance(fingerprint, str):
        raise PidFileProblem("has a malformed cpu or fingerprint")
    return PidRecord(
        pid=doc["pid"], host=doc["host"], port=doc["port"], argv=list(doc["argv"]),
        cwd=doc["cwd"], started_at=float(doc["started_at"]), start_ticks=doc["start_ticks"],
        cpu=cpu, fingerprint=fingerprint,
    )  # fmt: skip


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
        # the command name (field 2) may contain spaces and parentheses: split after the last ')'
        fields = text.rsplit(")", 1)[1].split()
        return fields[0], int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _cwd(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return None


def _runs_main_py(argv: list[str]) -> bool:
    """True for ``python main.py …`` (ComfyUI's entry point), not any command naming main.py."""
    return len(argv) >= 2 and Path(argv[1]).name == "main.py"


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    # NUL-terminated arguments; an empty argument ("--listen", "") is kept
    return [a.decode(errors="replace") for a in raw.split(b"\0")[:-1]]


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
    """True if the record's process is alive and provably still the ComfyUI we started:
    same kernel start time, same command line, same working directory (needs /proc)."""
    if record.start_ticks is None or not pid_alive(record.pid):
        return False
    stat = _proc_stat(record.pid)
    if stat is None or stat[1] != record.start_ticks:
        return False  # the pid was reused by another process (or there is no /proc)
    # the arguments after the interpreter: an image's python may be a wrapper that execs another
    if _cmdline(record.pid)[1:] != record.argv[1:] or not _runs_main_py(record.argv):
        return False
    cwd = _cwd(record.pid)
    return cwd is not None and os.path.realpath(cwd) == os.path.realpath(record.cwd)


def find_comfyui(root: Path) -> list[int]:
    """Pids of ComfyUI processes (``python main.py``) whose working directory is under ``root``.

    How ``stop`` and ``status`` find ROOT's ComfyUI when its PID file cannot be trusted: by
    where it runs, never by a port alone (several ComfyUIs may share a host).
    """
    base = os.path.realpath(root)
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        pid = int(entry)
        cwd = _cwd(pid)
        if cwd is None or not (cwd == base or cwd.startswith(base.rstrip("/") + "/")):
            continue
        if _runs_main_py(_cmdline(pid)) and pid_alive(pid):
            found.append(pid)
    return sorted(found)


def pid_path(root: Path) -> Path:
    """``ROOT/.comfyfleet/comfyui.pid``."""
    return root / STATE_DIR / PID_FILE


def log_path(root: Path) -> Path:
    """``ROOT/.comfyfleet/comfyui.log``."""
    return root / STATE_DIR / LOG_FILE


def load_pid_file(root: Path) -> tuple[PidRecord | None, str | None]:
    """(record, None); (None, why it cannot be trusted) for a malformed file; (None, None)."""
    path = pid_path(root)
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"{path} cannot be read ({exc.strerror})"
    try:
        return parse_pid_record(text), None
    except PidFileProblem as exc:
        return None, f"{path} {exc}: not trusted"


def read_pid_file(root: Path) -> PidRecord | None:
    """The PID file's record, or None when absent or not fully valid."""
    return load_pid_file(root)[0]


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
    record, problem = load_pid_file(root)
    action = "started"
    if problem is not None:
        on_info(f"{problem}; looking for ComfyUI by its working directory")
        _remove_pid_file(root)
        untracked = find_comfyui(root)
        for pid in untracked:
            on_info(f"stopping ComfyUI pid {pid} (running in {root}, no valid PID file)")
            await _stop_pid(pid, STOP_GRACE)
        action = "restarted" if untracked else action
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

    A trusted PID file names the process. A stale one (dead or reused pid) is removed without
    signalling its pid; a malformed one is never used to signal anything. In both cases (and
    with none) ComfyUI is found by its working directory under ROOT and its command line.
    Returns ``{"stopped", "pid", "stale", "killed", "found_by", "problem"}``.
    """
    record, problem = load_pid_file(root)
    result: dict[str, Any] = {"stopped": False, "pid": None, "stale": False, "killed": False,
                              "found_by": None, "problem": problem}  # fmt: skip
    if record is not None and is_our_process(record):
        result.update(stopped=True, pid=record.pid, found_by="pid_file")
        result["killed"] = await _stop_pid(record.pid, grace)
        _remove_pid_file(root)
        return result
    if record is not None or problem is not None:
        result.update(stale=record is not None, pid=record.pid if record else None)
        _remove_pid_file(root)
    for pid in find_comfyui(root):
        killed = await _stop_pid(pid, grace)
        result.update(stopped=True, pid=pid, found_by="cwd", killed=result["killed"] or killed)
    return result


async def _stop_pid(pid: int, grace: float) -> bool:
    """TERM ``pid``'s group, KILL it after ``grace``; True if it had to be killed."""
    _signal_group(pid, signal.SIGTERM)
    if await _wait_gone(pid, grace):
        return False
    _signal_group(pid, signal.SIGKILL)
    await _wait_gone(pid, 5.0)
    return True


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
    """``{"running", "healthy", "pid", "port", "uptime_s", "lock"}`` for ``comfyfleet status``.

    Read-only: takes no lock, removes no file. ``lock`` names the run holding ROOT, if any.
    """
    record, problem = load_pid_file(root)
    who = lock_holder(root)
    common = {"lock": who.to_json() if who else None, "pid_file_problem": problem}
    if record is not None and is_our_process(record):
        pid, host, port, started = record.pid, record.host, record.port, record.started_at
    else:
        found = find_comfyui(root)
        if not found:
            return {
                "running": False,
                "healthy": False,
                "pid": None,
                "port": record.port if record else None,
                "uptime_s": None,
                "stale_pid_file": record is not None,
                **common,
            }
        # no trusted record: what the process itself was started with
        pid = found[0]
        argv = _cmdline(pid)
        port = int(p) if (p := _arg_value(argv, "--port")) and p.isdigit() else 8188
        host = _arg_value(argv, "--listen") or "127.0.0.1"
        host = "127.0.0.1" if host in {"0.0.0.0", "::", ""} else host.split(",")[0]
        started = _started_at(pid)
    stats = await system_stats(host, port)
    devices = (stats or {}).get("devices") or []
    return {
        "running": True,
        "healthy": stats is not None,
        "pid": pid,
        "port": port,
        "host": host,
        "uptime_s": round(time.time() - started, 1) if started is not None else None,
        "devices": [d.get("name") for d in devices],
        "comfyui_version": ((stats or {}).get("system") or {}).get("comfyui_version"),
        "found_by": "pid_file" if record is not None and record.pid == pid else "cwd",
        **common,
    }


def _arg_value(argv: list[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def _started_at(pid: int) -> float | None:
    """Wall-clock start time of ``pid`` (from /proc start ticks and the boot time)."""
    stat = _proc_stat(pid)
    try:
        btime = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    return None if stat is None else btime + stat[1] / os.sysconf("SC_CLK_TCK")
