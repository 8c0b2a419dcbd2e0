"""Provision one instance over SSH: install the agent, start `provision` detached, follow it.

The fleet calls, per instance and run (both ids are the fleet's)::

    agent = ProvisionAgent("i-3f2a", Endpoint("203.0.113.7", 41022, "root", key),
                           HostKeyPolicy.tofu())          # first contact; later .pin(key)
    pinned = await agent.connect()                       # store it per instance id
    result = await agent.provision(ProvisionRun("r-01", manifest, "/workspace", secrets),
                                   sinks=FileRunSinks(logs_dir, "i-3f2a", "r-01"),
                                   on_progress=...)

Everything on the instance lives under the login user's home (``~/.comfyfleet-agent``):
``wheelhouse/`` (dependency wheels), ``wheels/<sha>/`` (comfyfleet itself), ``venvs/<sha>/``
(the agent venv, one per wheel hash: a reprovision installs nothing) and
``runs/<instance>/<run>/``
(the uploaded manifest and workflows, the start lock, where the logs began, the CLI's
output). Secrets never touch that tree: they travel on the SSH channel into a FIFO that is
the provision process's standard input (``provision --secrets-stdin``), and the provision
process keeps them in memory for the download engine only.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shlex
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any, Literal, Protocol

import asyncssh
import tomli_w

from comfyfleet.errors import ComfyfleetError, UsageError
from comfyfleet.fleet.wheelhouse import (
    InstancePlatform,
    Wheel,
    Wheelhouse,
    build_wheelhouse,
    running_wheel,
)
from comfyfleet.logstream import FollowOptions, FollowResult, FollowTarget, SshTarget, follow
from comfyfleet.logstream.core import HEAD_BYTES, FileIdentity, Position
from comfyfleet.logstream.markers import Outcome
from comfyfleet.logstream.remote import ConnectionLost, ReadTuning, open_connection, public_key_line
from comfyfleet.logstream.sink import FileSink, LogSink
from comfyfleet.names import UnsafeName, escape_controls, path_under, plain_name

AGENT_DIR = ".comfyfleet-agent"
MIN_PYTHON = (3, 11)


class AgentError(ComfyfleetError):
    """Provisioning over SSH could not proceed (the message says what is missing)."""


@dataclass(frozen=True)
class Endpoint:
    """Where the instance's sshd listens, and how we log in."""

    host: str
    port: int = 22
    user: str = "root"
    key: Path | None = None


@dataclass(frozen=True)
class HostKeyPolicy:
    """How the host key is checked: a pinned key, trust on first use, or a known_hosts file.

    Pinning is per instance id (Vast reuses proxy host:port pairs); trust on first use is
    for the first contact of a freshly created instance only; operator-owned hosts use the
    operator's known_hosts.
    """

    pinned: str | None = None
    trust_on_first_use: bool = False
    known_hosts: Path | None = None

    @classmethod
    def pin(cls, key: str) -> HostKeyPolicy:
        """Accept exactly ``key`` (``"ssh-ed25519 AAAA…"``)."""
        return cls(pinned=key)

    @classmethod
    def tofu(cls) -> HostKeyPolicy:
        """Accept the key shown now; :meth:`ProvisionAgent.connect` returns it to pin."""
        return cls(trust_on_first_use=True)

    @classmethod
    def operator(cls, known_hosts: Path | None = None) -> HostKeyPolicy:
        """The operator's known_hosts (default ``~/.ssh/known_hosts``); unknown is refused."""
        return cls(known_hosts=known_hosts or Path.home() / ".ssh" / "known_hosts")


@dataclass(frozen=True)
class AgentOptions:
    """Knobs of one agent: ComfyUI's port, extra environment, timeouts, caches."""

    #: a port, "auto" (a free port on the instance), or None (the manifest's own)
    comfyui_port: int | Literal["auto"] | None = None
    #: non-secret environment for the provision process (e.g. HF_ENDPOINT)
    env: Mapping[str, str] = field(default_factory=dict)
    #: more `comfyfleet provision` flags, e.g. ("--strict",)
    provision_args: tuple[str, ...] = ()
    #: the whole follow (`provision_timeout`)
    timeout: float = 2700.0
    #: the interpreter to use on the instance (default: the newest python3.x ≥ 3.11 found)
    python: str | None = None
    #: control-plane cache of the wheel and wheelhouses (default ~/.cache/comfyfleet)
    cache: Path | None = None
    tuning: ReadTuning = field(default_factory=ReadTuning)
    connect_timeout: float = 15.0


@dataclass(frozen=True)
class ProvisionRun:
    """One provisioning run: the fleet's run id, the manifest, the root, the secrets, and
    the instance it is for (an ssh host serves instance after instance: their run ids
    repeat, so the run's directory on the host is kept per instance)."""

    run_id: str
    manifest: Path
    instance_root: str
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    instance_id: str = ""

    @property
    def remote_dir(self) -> str:
        """The run's directory under the login user's home."""
        run = plain_name(self.run_id, what="run id")
        if not self.instance_id:
            return f"{AGENT_DIR}/runs/{run}"
        return f"{AGENT_DIR}/runs/{plain_name(self.instance_id, what='instance id')}/{run}"


@dataclass(frozen=True)
class InstallResult:
    """The agent venv on the instance: which Python, where, and whether we installed now."""

    python: str
    python_version: tuple[int, int]
    venv: str
    installed: bool
    uploaded: int  # files sent over SFTP this time


@dataclass(frozen=True)
class LaunchResult:
    """Whether this call started the run's provision (False: it was already started)."""

    started: bool
    run_dir: str
    pid: int | None = None


@dataclass
class Progress:
    """Structured progress from ``events.jsonl``: phase, bytes done/total, speed (B/s)."""

    phase: str = "starting"
    bytes_done: int = 0
    bytes_total: int = 0
    speed: float = 0.0
    run_started: bool = False
    outcome: Outcome | None = None
    reason: str = ""
    _files: dict[str, tuple[int, int, float]] = field(default_factory=dict, repr=False)

    def update(self, event: Mapping[str, Any]) -> bool:
        """Fold one event in; True when something a dashboard shows changed."""
        name = event.get("event")
        if name == "run_started":
            self.run_started = True
        elif name == "phase_started":
            self.phase = str(event.get("phase", self.phase))
        elif name in ("run_completed", "run_failed"):
            self.outcome = "complete" if name == "run_completed" else "failed"
            self.reason = str(event.get("reason", ""))
            self.phase = "done" if name == "run_completed" else "failed"
            self.speed = 0.0
        elif str(name).startswith("file_") and "filename" in event:
            key = f"{event.get('folder', '')}/{event['filename']}"
            done = int(event.get("bytes") or 0)
            total = int(event.get("total") or 0)
            finished = name in ("file_verified", "file_skipped", "file_failed")
            speed = 0.0 if finished else float(event.get("speed") or 0.0)
            self._files[key] = (done, total, speed)
            self.bytes_done = sum(d for d, _, _ in self._files.values())
            self.bytes_total = sum(t for _, t, _ in self._files.values())
            self.speed = sum(s for _, _, s in self._files.values())
        else:
            return False
        return True

    def to_json(self) -> dict[str, Any]:
        """The fields `GET /v1/instances` shows."""
        return {
            "phase": self.phase,
            "bytes_done": self.bytes_done,
            "bytes_total": self.bytes_total,
            "speed": round(self.speed),
        }


@dataclass(frozen=True)
class ProvisionResult:
    """How the run ended as the instance's own log and events tell it."""

    outcome: Literal["complete", "failed", "timeout"]
    message: str
    log: FollowResult
    events: FollowResult
    progress: Progress
    install: InstallResult | None = None
    launch: LaunchResult | None = None
    comfyui: dict[str, Any] | None = None

    @property
    def ready(self) -> bool:
        """``run_completed`` seen and ComfyUI healthy (the fleet's definition of ready)."""
        return (
            self.outcome == "complete"
            and self.progress.outcome == "complete"
            and bool(self.comfyui and self.comfyui.get("healthy"))
        )


class RunSinks(Protocol):
    """Where one run's ``provision.log`` and ``events.jsonl`` go (the fleet: its store)."""

    def sink(self, name: Literal["provision.log", "events.jsonl"]) -> LogSink:
        """The sink for one of the two files."""
        ...


class FileRunSinks:
    """``LOGS/<instance>/<run>/{provision.log,events.jsonl}`` (+ checkpoints), with
    ``LOGS/<instance>/provision.log`` (and ``events.jsonl``) linking to the latest run."""

    def __init__(self, logs_dir: Path, instance_id: str, run_id: str) -> None:
        self.instance_dir = logs_dir / plain_name(instance_id, what="instance id")
        self.run_dir = self.instance_dir / plain_name(run_id, what="run id")

    def sink(self, name: Literal["provision.log", "events.jsonl"]) -> LogSink:
        """A FileSink in the run's directory, linked from the instance's directory."""
        return FileSink(self.run_dir / name, link=self.instance_dir / name)


class EventMarkers:
    """Ends an ``events.jsonl`` follow on ``run_completed`` / ``run_failed``."""

    def first_match(self, lines: tuple[bytes, ...]) -> tuple[Outcome, str] | None:
        """The first terminal event among ``lines``."""
        for raw in lines:
            if b'"run_completed"' not in raw and b'"run_failed"' not in raw:
                continue
            try:
                name = json.loads(raw).get("event")
            except (ValueError, AttributeError):
                continue
            if name == "run_completed":
                return "complete", raw.decode("utf-8", "replace")
            if name == "run_failed":
                return "failed", raw.decode("utf-8", "replace")
        return None


# --- remote scripts (POSIX sh; values arrive as positional arguments, never interpolated) ---

_PROBE = r"""
cd "$HOME" || exit 1
printf 'home %s\n' "$HOME"
for p in "$@"; do
  command -v "$p" >/dev/null 2>&1 || continue
  "$p" -c 'import json, platform, sys
print("python " + json.dumps([sys.executable, list(sys.version_info[:2]),
      platform.machine(), list(platform.libc_ver())]))' 2>/dev/null
done
"""

_FREE_PORT = (
    "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"
)

_INSTALL = r"""
set -e
cd "$HOME"
py=$1 venv=$2 wheel=$3 house=$4
if [ -f "$venv/.ready" ]; then echo cached; exit 0; fi
rm -rf "$venv"
"$py" -m venv --without-pip "$venv"
# pip runs from its own wheel: no ensurepip (Debian's python3-venv) and no index needed.
# --no-compile: byte-compiling every module of every wheel was half of the install's CPU;
# the few modules the agent imports are compiled when first imported.
pipwhl=$(ls "$house"/pip-*.whl | head -n 1)
"$venv/bin/python" "$pipwhl/pip" install --no-index --find-links "$house" --no-cache-dir \
  --disable-pip-version-check --quiet --no-compile "$wheel"
"$venv/bin/comfyfleet" --help >/dev/null
: > "$venv/.ready"
echo installed
"""

_LAUNCH = r"""
set -e
cd "$HOME"
run=$1 root=$2 cmd=$3  # cmd: the provision command line, each word quoted by the client
mkdir -p "$root"
# The run's start lock: mkdir is atomic, so one run id starts one provision, ever.
if ! mkdir "$run/started" 2>/dev/null; then echo already; cat >/dev/null; exit 0; fi
# Where the previous run's logs end: this run's copies start after them.
seed() {
  if [ -f "$1" ]; then
    printf '%s %s\n' "$(stat -L -c '%d %i %s' -- "$1")" "$(head -c 1024 -- "$1" | base64 -w 0)"
  else echo -; fi
}
{ seed "$root/.comfyfleet/provision.log"; seed "$root/.comfyfleet/events.jsonl"; } > "$run/seed.tmp"
mv "$run/seed.tmp" "$run/seed"
rm -f "$run/secrets.fifo"
mkfifo -m 600 "$run/secrets.fifo"
# All three streams are redirected outside the backgrounded command, or sshd keeps the
# channel open until it ends; setsid puts it in a session of its own.
# (No redirection on `eval`: dash keeps copies of the redirected fds for it, and the
# background job would inherit the channel through them.)
fifo=$run/secrets.fifo out=$run/provision.out
eval "set -- $cmd"
{ setsid "$@" <"$fifo" >"$out" 2>&1 & }
echo "started $!"
# The secrets: from this channel, through the FIFO (a kernel buffer, not a file's content).
cat > "$fifo"
rm -f "$fifo"
"""


_WIPE = r"""
cd "$HOME" || exit 1
root=$1
# Stop ComfyUI (and any run holding the root) with an agent venv's comfyfleet, if one is here.
for cf in "$HOME"/.comfyfleet-agent/venvs/*/bin/comfyfleet; do
  [ -x "$cf" ] || continue
  "$cf" stop --root "$root" >/dev/null || { echo "comfyfleet stop failed" >&2; exit 3; }
  break
done
# What a lessee leaves behind: outputs, uploads, user data (settings, workflows, queue).
for d in output input user; do rm -rf -- "$root/ComfyUI/$d"; done
if [ -d "$root/ComfyUI" ]; then mkdir -p -- "$root/ComfyUI/output" "$root/ComfyUI/input"; fi
echo wiped
"""


class ProvisionAgent:
    """Provisioning of one instance over SSH (one connection, reused across calls)."""

    def __init__(
        self,
        instance_id: str,
        endpoint: Endpoint,
        host_keys: HostKeyPolicy,
        options: AgentOptions | None = None,
    ) -> None:
        self.instance_id = plain_name(instance_id, what="instance id")
        self.endpoint = endpoint
        self.host_keys = host_keys
        self.options = options or AgentOptions()
        self.host_key: str | None = host_keys.pinned
        self._conn: asyncssh.SSHClientConnection | None = None
        self._home: str | None = None
        self._pythons: list[tuple[str, tuple[int, int], str, tuple[str, str]]] = []

    # --- connection -------------------------------------------------------------------

    def ssh_target(self) -> SshTarget:
        """The logstream target for this instance, with the host key as now pinned."""
        e = self.endpoint
        pol = self.host_keys
        return SshTarget(
            e.host, e.port, e.user, e.key,
            known_hosts=pol.known_hosts,
            host_key=self.host_key,
        )  # fmt: skip

    async def connect(self) -> str:
        """Open the connection; returns the host key seen (to pin per instance id)."""
        if self._conn is not None:
            return self.host_key or ""
        target = self.ssh_target()
        first = self.host_keys.trust_on_first_use and self.host_key is None
        try:
            conn = await open_connection(
                target, connect_timeout=self.options.connect_timeout, first_contact=first
            )
        except ConnectionLost as exc:
            raise AgentError(f"cannot reach {target.label}: {exc}") from None
        key = conn.get_server_host_key()
        if key is not None:
            self.host_key = public_key_line(key)
        self._conn = conn
        return self.host_key or ""

    async def close(self) -> None:
        """Close the connection (the detached provision keeps running)."""
        if self._conn is not None:
            self._conn.close()
            await self._conn.wait_closed()
            self._conn = None

    async def _run(self, script: str, *args: str, input: str = "", check: bool = True) -> str:
        conn = await self._connection()
        command = " ".join(shlex.quote(a) for a in ["sh", "-c", script, "comfyfleet-agent", *args])
        try:
            done = await conn.run(command, input=input, encoding="utf-8", errors="replace")
        except (OSError, asyncssh.Error) as exc:
            raise AgentError(f"{self.endpoint.host}: {type(exc).__name__}: {exc}") from None
        if check and done.exit_status != 0:
            tail = " / ".join(str(done.stderr or done.stdout or "").strip().splitlines()[-3:])
            raise AgentError(
                f"{self.endpoint.host}: remote step failed (exit {done.exit_status}): "
                + escape_controls(tail)
            )
        return str(done.stdout or "")

    async def _connection(self) -> asyncssh.SSHClientConnection:
        if self._conn is None:
            await self.connect()
        assert self._conn is not None
        return self._conn

    # --- install ------------------------------------------------------------------------

    async def probe(self) -> InstancePlatform:
        """The instance's home and Python; AgentError when no Python ≥ 3.11 is there."""
        names = (
            [self.options.python]
            if self.options.python
            else ["python3.14", "python3.13", "python3.12", "python3.11", "python3"]
        )
        out = await self._run(_PROBE, *names)
        found = []
        for line in out.splitlines():
            if line.startswith("home "):
                self._home = line[5:]
            elif line.startswith("python "):
                exe, ver, machine, libc = json.loads(line[7:])
                found.append((exe, (ver[0], ver[1]), machine, (libc[0], libc[1])))
        good = [f for f in found if f[1] >= MIN_PYTHON]
        if not good:
            seen = ", ".join(f"{exe} {v[0]}.{v[1]}" for exe, v, _, _ in found) or "none"
            raise AgentError(
                f"{self.endpoint.host} has no Python >= 3.11 for the agent (found: {seen})",
                hint="use an image with Python 3.11 or newer (e.g. a current vastai/pytorch)",
            )
        exe, ver, machine, (libc, libc_ver) = max(good, key=lambda f: f[1])
        if libc != "glibc":
            raise AgentError(
                f"{self.endpoint.host}: {exe} is linked against {libc or 'an unknown libc'}; "
                "the wheelhouse is built for glibc (manylinux) only",
                hint="use a glibc-based image (Debian, Ubuntu)",
            )
        self._pythons = [(exe, ver, machine, (libc, libc_ver))]
        major, minor = (int(x) for x in libc_ver.split(".")[:2])
        return InstancePlatform(ver, machine, (major, minor))

    async def install(self) -> InstallResult:
        """Upload the running comfyfleet and its wheelhouse; make the agent venv (cached)."""
        platform = await self.probe()
        exe = self._pythons[0][0]
        wheel = await asyncio.to_thread(running_wheel, self.options.cache)
        venv = f"{AGENT_DIR}/venvs/{wheel.sha256[:16]}"
        state = (await self._run('[ -f "$1/.ready" ] && echo ready || true', venv)).strip()
        if state == "ready":
            return InstallResult(exe, platform.python, venv, installed=False, uploaded=0)
        house = await build_wheelhouse(platform, self.options.cache)
        uploaded = await self._upload_wheels(wheel, house)
        remote_wheel = f"{AGENT_DIR}/wheels/{wheel.sha256[:16]}/{wheel.path.name}"
        out = await self._run(_INSTALL, exe, venv, remote_wheel, f"{AGENT_DIR}/wheelhouse")
        return InstallResult(
            exe, platform.python, venv, installed="installed" in out, uploaded=uploaded
        )

    async def _upload_wheels(self, wheel: Wheel, house: Wheelhouse) -> int:
        conn = await self._connection()
        sent = 0
        async with conn.start_sftp_client() as sftp:
            plan = [(p, f"{AGENT_DIR}/wheelhouse/{p.name}") for p in house.files]
            plan.append((wheel.path, f"{AGENT_DIR}/wheels/{wheel.sha256[:16]}/{wheel.path.name}"))
            for local, remote in plan:
                size = local.stat().st_size
                try:
                    if (await sftp.stat(remote)).size == size:
                        continue  # wheel names carry their version: same name, same wheel
                except asyncssh.SFTPNoSuchFile:
                    pass
                await _put(sftp, local, remote)
                sent += 1
        return sent

    # --- launch -------------------------------------------------------------------------

    def _absolute(self, path: str) -> str:
        if path.startswith("/"):
            return path
        assert self._home is not None, "probe() first"
        return str(PurePosixPath(self._home) / path)

    async def launch(self, run: ProvisionRun, install: InstallResult) -> LaunchResult:
        """Upload the manifest and its workflows, then start `provision` detached, once."""
        run_dir = run.remote_dir
        already = (await self._run('[ -d "$1/started" ] && echo yes || true', run_dir)).strip()
        if already == "yes":
            return LaunchResult(False, run_dir)
        manifest_text = await self._manifest_for_instance(run.manifest)
        await self._upload_manifest(run.manifest, manifest_text, f"{run_dir}/manifest")
        env = [f"{k}={v}" for k, v in self.options.env.items()]
        root = self._absolute(run.instance_root)
        argv = [
            *(["env", *env] if env else []),
            f"{self._home}/{install.venv}/bin/comfyfleet", "provision",
            f"{self._home}/{run_dir}/manifest/manifest.toml", "--root", root, "--secrets-stdin",
            *self.options.provision_args,
        ]  # fmt: skip
        cmd = " ".join(shlex.quote(a) for a in argv)
        out = await self._run(_LAUNCH, run_dir, root, cmd, input=json.dumps(dict(run.secrets)))
        line = out.strip().splitlines()[-1] if out.strip() else ""
        if line == "already":
            return LaunchResult(False, run_dir)
        if not line.startswith("started "):
            raise AgentError(f"{self.endpoint.host}: provision did not start ({line!r})")
        return LaunchResult(True, run_dir, int(line.split()[1]))

    async def _manifest_for_instance(self, manifest: Path) -> str:
        from comfyfleet import load_manifest

        load_manifest(manifest)  # a bad manifest fails here, exit 2, before any upload
        text = manifest.read_text()
        port = self.options.comfyui_port
        if port is None:
            return text
        if port == "auto":
            assert self._pythons, "install() first"
            port = int((await self._run(_FREE_PORT_SCRIPT, self._pythons[0][0])).strip())
        return with_port(text, port)

    async def _upload_manifest(self, manifest: Path, text: str, remote_dir: str) -> None:
        from comfyfleet import load_manifest

        base = manifest.parent
        files: list[tuple[bytes, str]] = [(text.encode(), "manifest.toml")]
        for wf in load_manifest(manifest).workflows:
            parts = PurePosixPath(wf.path).parts
            try:
                local = path_under(base, *parts)
            except UnsafeName as exc:
                raise UsageError(
                    f"{manifest}: workflows: {wf.path} is not under the manifest's folder ({exc})",
                    hint="keep workflow files beside the manifest: they are uploaded with it",
                ) from None
            files.append((local.read_bytes(), "/".join(parts)))
        conn = await self._connection()
        async with conn.start_sftp_client() as sftp:
            for data, rel in files:
                remote = f"{remote_dir}/{rel}"
                await sftp.makedirs(str(PurePosixPath(remote).parent), exist_ok=True)
                async with sftp.open(remote + ".part", "wb") as fh:
                    await fh.write(data)
                await sftp.posix_rename(remote + ".part", remote)

    async def _seeds(self, run_dir: str) -> tuple[Position | None, Position | None]:
        conn = await self._connection()
        async with conn.start_sftp_client() as sftp, sftp.open(f"{run_dir}/seed", "rb") as fh:
            text = (await fh.read()).decode()
        seeds = [_seed(line) for line in text.splitlines()[:2]]
        return seeds[0], seeds[1]

    async def wipe(self, instance_root: str) -> None:
        """Stop ComfyUI and delete its output/, input/ and user data (before a reprovision or
        the release of an ssh host): nothing of one lessee reaches the next."""
        if self._home is None:
            await self.probe()
        out = await self._run(_WIPE, self._absolute(instance_root))
        if "wiped" not in out:
            raise AgentError(f"{self.endpoint.host}: the wipe did not finish")

    # --- follow -------------------------------------------------------------------------

    async def follow(
        self,
        run: ProvisionRun,
        sinks: RunSinks,
        *,
        on_progress: Callable[[Progress], None] | None = None,
        on_line: Callable[[bytes], None] | None = None,
    ) -> tuple[FollowResult, FollowResult, Progress]:
        """Follow the run's provision.log and events.jsonl into ``sinks``, exactly once,
        until each reports the end (resumable: the sinks hold the checkpoints)."""
        run_dir = run.remote_dir
        if self._home is None:
            await self.probe()
        log_seed, events_seed = await self._seeds(run_dir)
        state_dir = self._absolute(run.instance_root) + "/.comfyfleet"
        target = self.ssh_target()
        progress = Progress()

        def event_line(raw: bytes) -> None:
            try:
                event = json.loads(raw)
            except ValueError:
                return
            if isinstance(event, dict) and progress.update(event) and on_progress:
                on_progress(progress)

        base = FollowOptions(timeout=self.options.timeout, tuning=self.options.tuning)
        log_task = follow(
            FollowTarget(target, f"{state_dir}/provision.log"),
            base,
            sink=sinks.sink("provision.log"),
            start=log_seed,
            on_line=on_line,
        )
        events_task = follow(
            FollowTarget(target, f"{state_dir}/events.jsonl"),
            replace(base, markers=EventMarkers()),
            sink=sinks.sink("events.jsonl"),
            start=events_seed,
            on_line=event_line,
        )
        log_result, events_result = await asyncio.gather(log_task, events_task)
        return log_result, events_result, progress

    async def comfyui_status(self, run: ProvisionRun, install: InstallResult) -> dict[str, Any]:
        """`comfyfleet status --json` of the instance root, run with the agent venv."""
        root = self._absolute(run.instance_root)
        out = await self._run(
            '"$1" status --root "$2" --json || true', f"{install.venv}/bin/comfyfleet", root
        )
        try:
            doc = json.loads(out)
        except ValueError:
            return {"running": False, "healthy": False, "error": escape_controls(out[-200:])}
        return doc if isinstance(doc, dict) else {"running": False, "healthy": False}

    async def provision(
        self,
        run: ProvisionRun,
        sinks: RunSinks,
        *,
        on_progress: Callable[[Progress], None] | None = None,
        on_line: Callable[[bytes], None] | None = None,
    ) -> ProvisionResult:
        """install → launch (once per run id) → follow → ComfyUI status."""
        install = await self.install()
        launch = await self.launch(run, install)
        log, events, progress = await self.follow(
            run, sinks, on_progress=on_progress, on_line=on_line
        )
        comfyui = await self.comfyui_status(run, install)
        outcome = log.outcome
        message = log.message
        if outcome == "complete" and progress.outcome != "complete":
            outcome, message = "failed", f"provision.log completed but events say {events.message}"
        return ProvisionResult(outcome, message, log, events, progress, install, launch, comfyui)


_FREE_PORT_SCRIPT = '"$1" -c ' + shlex.quote(_FREE_PORT)


def with_port(manifest_text: str, port: int) -> str:
    """The manifest with ComfyUI's ``--port`` set to ``port`` (added when absent)."""
    doc = tomllib.loads(manifest_text)
    comfyui = doc.setdefault("comfyui", {})
    args = list(comfyui.get("args", ["--listen", "127.0.0.1", "--port", "8188"]))
    if "--port" in args and args.index("--port") + 1 < len(args):
        args[args.index("--port") + 1] = str(port)
    else:
        args = [a for a in args if not a.startswith("--port=")] + ["--port", str(port)]
    comfyui["args"] = args
    return tomli_w.dumps(doc)


def _seed(line: str) -> Position | None:
    """A start position at the end of the previous run's file (``-``: there was none)."""
    parts = line.split()
    if len(parts) < 3:
        return None
    dev, ino, size = (int(p) for p in parts[:3])
    head = base64.b64decode(parts[3]) if len(parts) > 3 else b""
    head = head[: min(HEAD_BYTES, size)]
    return Position(FileIdentity(dev, ino, head), offset=size)


async def _put(sftp: asyncssh.SFTPClient, local: Path, remote: str) -> None:
    """Upload to ``remote.part`` and rename: a cut upload never passes for a whole file."""
    await sftp.makedirs(str(PurePosixPath(remote).parent), exist_ok=True)
    await sftp.put(str(local), remote + ".part")
    await sftp.posix_rename(remote + ".part", remote)
