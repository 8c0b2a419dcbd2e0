"""``comfyfleet provision | verify | start | stop | status`` (DESIGN.md CLI contract)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from comfyfleet.cli.app import app, emit_json, run, run_async
from comfyfleet.names import escape_controls
from comfyfleet.progress import event_console
from comfyfleet.redact import redact_text

if TYPE_CHECKING:
    from comfyfleet.lock import LockHolder, RootLock

# The library is imported inside each command: `--help`, `status` and `stop` start fast.

MANIFEST = typer.Argument(..., help="The manifest (TOML or YAML).", show_default=False)
ROOT = typer.Option(..., "--root", help="The directory to provision (ComfyUI, models, state).")
JSON = typer.Option(False, "--json", help="Print one JSON document on stdout (progress on stderr).")
WAIT_LOCK = typer.Option(
    False,
    "--wait-lock",
    help="If another comfyfleet run holds ROOT, wait for it (default: exit 1).",
)
#: seconds ``stop`` gives a run holding the lock to end after SIGTERM before it is killed
STOP_RUN_GRACE = 60.0
CONTENT_STORE = typer.Option(
    None,
    "--content-store",
    help="A directory shared by several roots: models are downloaded once (per sha256) "
    "and hard-linked into each root.",
)


def _err(line: str) -> None:
    # stderr is often captured into a log someone follows: values in it are shown escaped
    print(escape_controls(redact_text(line)), file=sys.stderr, flush=True)


@contextlib.contextmanager
def locked_root(root: Path, command: str, *, wait: bool) -> Iterator[RootLock]:
    """Hold ROOT's lock for a command, taken before anything under ROOT is touched.

    Refused (another run holds it): :class:`~comfyfleet.errors.RootLocked`, exit 1. While
    waiting (``wait``), SIGTERM and Ctrl-C end the command with 130, nothing touched.
    """
    from comfyfleet.lock import hold_root

    def waiting(who: LockHolder | None) -> None:
        pid = f"pid {who.pid}, {who.command}" if who else "pid unknown"
        _err(f"waiting for another comfyfleet run ({pid}) to release {root}")

    with hold_root(root, command, wait=wait, on_wait=waiting) as lock:
        yield lock


_last_phase: list[str] = [""]


def render_event(event: dict[str, Any]) -> None:
    """Human progress on stderr for the events the download renderer does not show.

    Writes to the terminal: subscribe it through :func:`comfyfleet.progress.event_console`,
    which calls it on its own thread, never on the event loop.
    """
    name = event["event"]
    if name == "phase_started":
        if event["phase"] != _last_phase[0]:
            _err(f"==> {event['phase']}")
        _last_phase[0] = event["phase"]
    elif name == "node_installed":
        _err(f"    node {event['name']}: {event['status']} ({(event.get('commit') or '')[:12]})")
    elif name == "node_failed":
        level = (
            "FAILED (critical)" if event.get("critical") else "failed (non-critical, continuing)"
        )
        first = (event.get("error") or "").partition("\n")[0]
        _err(f"    node {event['name']}: {level}: {first}")
    elif name == "validation" and event.get("status") != "ok":
        _err(f"    {event['status']}: {event['name']}: {event.get('detail', '')}")
    elif name == "comfyui_started":
        _err(f"    ComfyUI {event['action']} (pid {event['pid']}, port {event['port']})")
    elif name == "comfyui_ready":
        _err(f"    ComfyUI ready at {event['url']}")
    elif name == "run_failed":
        _err(f"PROVISIONING FAILED: {event.get('reason', '')}")
    elif name == "run_completed":
        _err(f"PROVISIONING COMPLETE in {event.get('seconds', 0):.1f}s")


#: what a provision --json document holds when the run ended before its report
_RUN_DOC: dict[str, Any] = {
    "files": [],
    "bytes": 0,
    "seconds": None,
    "nodes": [],
    "comfyui": {"pid": None, "port": None, "ready": False},
}


@app.command()
def provision(
    manifest: Path = MANIFEST,
    root: Path = ROOT,
    strict: bool = typer.Option(False, "--strict", help="Any warning fails the run."),
    no_start: bool = typer.Option(
        False, "--no-start", help="Install and verify; don't start ComfyUI."
    ),
    wait_lock: bool = WAIT_LOCK,
    secrets_stdin: bool = typer.Option(
        False,
        "--secrets-stdin",
        help='Read tokens as a JSON object (e.g. {"HF_TOKEN": "..."}) from stdin; '
        "only the downloads get them, never the environment of git, pip or ComfyUI.",
    ),
    content_store: Path | None = CONTENT_STORE,
    json_out: bool = JSON,
) -> None:
    """Install ComfyUI, custom nodes, models and workflows; verify; start ComfyUI until ready."""

    def body() -> int:
        from comfyfleet.manifest import load_manifest
        from comfyfleet.provisioning import provision as do_provision

        if secrets_stdin:
            _secrets_from_stdin()
        m = load_manifest(manifest)
        with (
            locked_root(root, "provision", wait=wait_lock),
            event_console(render_event) as console,
        ):
            report = run_async(
                lambda: do_provision(
                    m,
                    root,
                    strict=strict or None,
                    start=not no_start,
                    on_event=console.on_event,
                    content_store=content_store,
                ),
                resume_hint="downloads and installs done so far are kept — run provision again",
            )
        if json_out:
            emit_json(report.to_json())
        if not report.ok:
            _err(f"error: {report.reason}")
            _err(f"see {root / '.comfyfleet' / 'provision.log'} and errors.log")
            if report.traceback_file is not None:
                _err(f"the traceback is in {report.traceback_file}")
            return 1
        if report.comfyui is not None:
            _err(
                f"ComfyUI is running (pid {report.comfyui.pid}) on port {report.comfyui.port}; "
                f"stop it with: comfyfleet stop --root {root}"
            )
        return 0

    run(body, json_doc=_RUN_DOC if json_out else None, root=root)


_NOTHING_CHANGED = "nothing was changed; run it again"
_START_DOC: dict[str, Any] = {"pid": None, "port": None, "ready": False}
_STOP_DOC: dict[str, Any] = {"stopped": False, "pid": None, "stale": False, "killed": False}
_STATUS_DOC: dict[str, Any] = {
    "running": False, "healthy": False, "pid": None, "port": None, "uptime_s": None,
}  # fmt: skip


def _secrets_from_stdin() -> None:
    from comfyfleet import credentials
    from comfyfleet.errors import UsageError

    text = sys.stdin.read(1 << 16)
    try:
        credentials.give(credentials.parse_secrets(text))
    except ValueError as exc:
        raise UsageError(f"--secrets-stdin: {exc}") from None


@app.command("verify")
def verify_cmd(
    manifest: Path = MANIFEST,
    root: Path = ROOT,
    strict: bool = typer.Option(False, "--strict", help="Warnings fail too."),
    json_out: bool = JSON,
) -> None:
    """Check models (present, verified), nodes (at their refs) and [validate] minimums."""

    def body() -> int:
        from comfyfleet.manifest import load_manifest
        from comfyfleet.verification import verify

        m = load_manifest(manifest)
        report = run_async(
            lambda: verify(m, root.resolve(), strict=strict or None), resume_hint=_NOTHING_CHANGED
        )
        if json_out:
            emit_json(report.to_json())
        else:
            width = max((len(c.name) for c in report.checks), default=10)
            for c in report.checks:
                print(f"{c.status.upper():5} {c.name:<{width}}  {c.detail}")
            print("OK" if report.ok else "FAILED" + (" (strict)" if report.strict else ""))
        return 0 if report.ok else 1

    run(body, json_doc={"checks": []} if json_out else None, root=root)


@app.command()
def start(
    manifest: Path = MANIFEST, root: Path = ROOT, wait_lock: bool = WAIT_LOCK, json_out: bool = JSON
) -> None:
    """Start ComfyUI as the manifest says (or adopt a healthy one) and wait until ready."""

    def body() -> int:
        from comfyfleet.manifest import load_manifest
        from comfyfleet.provisioning import start_comfyui

        m = load_manifest(manifest)
        with locked_root(root, "start", wait=wait_lock):
            info = run_async(
                lambda: start_comfyui(m, root.resolve(), on_info=_err),
                resume_hint="run start again (a ComfyUI already up is adopted)",
            )
        if json_out:
            emit_json(info.to_json())
        for w in info.report.warnings:
            _err(f"warning: {w}")
        if not info.ready:
            for p in info.report.problems:
                _err(f"not ready: {p}")
            return 1
        _err(f"ComfyUI ready on port {info.port} (pid {info.pid}, {info.action})")
        return 0

    run(body, json_doc=_START_DOC if json_out else None, root=root)


@app.command()
def stop(
    root: Path = ROOT,
    wait_lock: bool = typer.Option(
        False, "--wait-lock", help="Let a run that holds ROOT finish instead of stopping it first."
    ),
    json_out: bool = JSON,
) -> None:
    """Stop the run holding ROOT (if any: SIGTERM, it ends cleanly), then ROOT's ComfyUI."""

    def body() -> int:
        from comfyfleet import runtime
        from comfyfleet.lock import STATE_DIR, RootLock, check_root, stop_holder

        check_root(root)
        stopped_run: LockHolder | None = None
        lock: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if (root / STATE_DIR).is_dir():  # no state dir: no run of ours can hold a lock here
            if wait_lock:
                lock = locked_root(root, "stop", wait=True)
            else:
                held = RootLock(root, "stop")
                stopped_run = stop_holder(root, held, grace=STOP_RUN_GRACE)
                if stopped_run is not None:
                    _err(f"stopped the comfyfleet run holding {root} (pid {stopped_run.pid}, "
                         f"{stopped_run.command})")  # fmt: skip
                lock = held  # held by stop_holder; leaving the block releases it
        with lock:
            result = run_async(lambda: runtime.stop(root.resolve()), resume_hint="run stop again")
        result["run_stopped"] = stopped_run.to_json() if stopped_run else None
        if result["problem"]:
            _err(f"warning: {result['problem']}; looked for ComfyUI by its working directory")
        if json_out:
            emit_json(result)
        elif result["stopped"]:
            how = ", found by its working directory" if result["found_by"] == "cwd" else ""
            _err(
                f"stopped ComfyUI (pid {result['pid']}{how})"
                + (" (killed)" if result["killed"] else "")
            )
        elif result["stale"]:
            _err(
                f"stale PID file (pid {result['pid']} is not our ComfyUI): removed, "
                "nothing signalled"
            )
        else:
            _err("nothing running")
        return 0

    run(body, json_doc=_STOP_DOC if json_out else None, root=root)


@app.command()
def status(root: Path = ROOT, json_out: bool = JSON) -> None:
    """Whether ComfyUI runs and answers: pid, port, health, uptime (exit 1 unless healthy)."""

    def body() -> int:
        from comfyfleet import runtime

        doc = run_async(lambda: runtime.status(root.resolve()), resume_hint=_NOTHING_CHANGED)
        if json_out:
            emit_json(doc)
        elif doc["running"]:
            health = "healthy" if doc["healthy"] else "NOT answering"
            print(
                f"running pid {doc['pid']} port {doc['port']} {health}, up {doc['uptime_s']:.0f}s"
            )
        else:
            print("not running")
        if not json_out and doc.get("pid_file_problem"):
            _err(f"warning: {doc['pid_file_problem']}; looked for ComfyUI by its working directory")
        if not json_out and doc.get("lock"):
            who = doc["lock"]
            print(f"run in progress: {who['command']} (pid {who['pid']}) since {who['since']}")
        return 0 if doc["running"] and doc["healthy"] else 1

    run(body, json_doc=_STATUS_DOC if json_out else None, root=root)
