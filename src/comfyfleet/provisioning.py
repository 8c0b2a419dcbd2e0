"""``provision``: from a bare root to a ComfyUI that is verifiably ready — one idempotent run.

Phases (each timed, each announced by a ``phase_started`` event):

1. ``workflows``: parse the manifest's workflows and cross-check the models they need — before
   anything is downloaded, so a missing model fails in a second, not after an hour;
2. ``download`` ‖ ``install``: model downloads run concurrently with the git/pip work (ComfyUI
   checkout → its requirements and the custom nodes; pip serialised);
3. ``workflows`` (install), ``verify``, ``start`` (adopting a healthy ComfyUI already running,
   restarting it only when its code, nodes or args changed).

Exit 0 only when ComfyUI is ready by its own API. Every failure ends the run with the reason in
``provision.log`` (final marker line), ``errors.log`` and ``.provisioning_failed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comfyfleet import runtime
from comfyfleet.download import DownloadReport, download_all
from comfyfleet.errors import (
    DISK_FULL_PREFIX,
    ComfyfleetError,
    DiskFull,
    RuntimeFailure,
    ValidationFailed,
    WorkflowError,
    internal_error,
    known_error,
    one_line,
)
from comfyfleet.events import STATE_DIR, RunLog
from comfyfleet.install import comfyui as comfyui_install
from comfyfleet.install.nodes import NodeResult, install_nodes
from comfyfleet.install.workflows import check_workflows, install_workflows
from comfyfleet.lock import check_root
from comfyfleet.manifest import Manifest
from comfyfleet.verification import VerifyReport, provisioned_models, verify


@dataclass
class ProvisionReport:
    """Everything a provision run did (the ``provision --json`` document)."""

    ok: bool = False
    reason: str = ""
    download: DownloadReport | None = None
    nodes: list[NodeResult] = field(default_factory=list)
    comfyui: runtime.RuntimeInfo | None = None
    checks: VerifyReport | None = None
    phases: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    port: int = 0
    workflows: list[str] = field(default_factory=list)
    comfyui_commit: str | None = None
    #: the file holding the traceback of an internal error (a bug), when there was one
    traceback_file: Path | None = None

    def to_json(self) -> dict[str, Any]:
        """``{"ok", "files", "bytes", "seconds", "nodes", "comfyui", "phases", ...}``."""
        dl = self.download.to_json() if self.download is not None else {}
        comfy = (
            self.comfyui.to_json()
            if self.comfyui is not None
            else {"pid": None, "port": self.port, "ready": False}
        )
        doc: dict[str, Any] = {
            "ok": self.ok,
            "reason": self.reason or None,
            "files": dl.get("files", []),
            "bytes": dl.get("bytes", 0),
            "seconds": round(self.seconds, 3),
            "download_seconds": dl.get("seconds"),
            "nodes": [n.to_json() for n in self.nodes],
            "comfyui": {**comfy, "commit": self.comfyui_commit},
            "phases": {k: round(v, 3) for k, v in self.phases.items()},
            "checks": [c.to_json() for c in self.checks.checks] if self.checks else [],
            "workflows": self.workflows,
        }
        if not self.ok:
            doc["error"] = self.reason or "failed"
        if self.traceback_file is not None:
            doc["traceback_file"] = str(self.traceback_file)
        return doc


class _Phases:
    """Times named phases and announces them on the run log."""

    def __init__(self, log: RunLog, report: ProvisionReport) -> None:
        self.log = log
        self.report = report

    @contextlib.asynccontextmanager
    async def __call__(self, name: str):  # type: ignore[no-untyped-def]
        self.log.set_phase(name)
        started = time.monotonic()
        try:
            yield
        finally:
            seconds = time.monotonic() - started
            self.report.phases[name] = self.report.phases.get(name, 0.0) + seconds
            self.log.emit("phase_finished", phase=name, seconds=round(seconds, 3))


def expectations(
    manifest: Manifest, root: Path, nodes: list[NodeResult] | None = None
) -> runtime.Expectations:
    """What ComfyUI must show to be ready: provisioned models, node classes, a CUDA device."""
    failed = {n.name for n in nodes or [] if n.status == "failed"}
    models = [
        # ComfyUI lists a file in a subfolder as "<subfolder>/<filename>"
        (m.entry.key, m.entry.listed_as(m.filename))
        for m in provisioned_models(manifest, root)
        if m.filename and m.path is not None and m.path.exists()
    ]
    classes = [c for n in manifest.nodes if n.critical for c in n.classes]
    optional = [
        c for n in manifest.nodes if not n.critical and n.name not in failed for c in n.classes
    ]
    return runtime.Expectations(
        models=models,
        classes=classes,
        optional_classes=optional,
        need_cuda=not runtime.wants_cpu(manifest.comfyui.args),
    )


def fingerprint(manifest: Manifest, comfyui_commit: str | None, nodes: list[NodeResult]) -> str:
    """What the running ComfyUI must have been started with to be adopted as is."""
    parts = [comfyui_commit or "", *sorted(f"{n.name}@{n.commit}" for n in nodes if n.commit)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


async def start_comfyui(
    manifest: Manifest,
    root: Path,
    *,
    nodes: list[NodeResult] | None = None,
    fingerprint_: str = "",
    restart: bool = False,
    on_info: Callable[[str], None] = lambda _m: None,
    start_timeout: float = runtime.START_TIMEOUT,
) -> runtime.RuntimeInfo:
    """Start (or adopt) ComfyUI and check readiness (an unready ComfyUI is reported, not raised)."""
    settings = manifest.comfyui
    return await runtime.start(
        root=root,
        comfyui_dir=manifest.comfyui_dir(root),
        python=comfyui_install.comfyui_python(manifest, root),
        args=settings.args,
        host=settings.listen,
        port=settings.port,
        expect=expectations(manifest, root, nodes),
        fingerprint=fingerprint_,
        restart=restart,
        on_info=on_info,
        start_timeout=start_timeout,
    )


async def provision(
    manifest: Manifest,
    root: Path,
    *,
    strict: bool | None = None,
    start: bool = True,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    start_timeout: float = runtime.START_TIMEOUT,
    content_store: Path | None = None,
) -> ProvisionReport:
    """Provision ``root`` from ``manifest``; never raises for a failed step (see ``report.ok``).

    ``content_store``: a directory shared with other roots (models fetched once, hard-linked).

    Cancellation propagates (after the run is recorded as failed, so the marker and the
    sentinel say so); the CLI turns it into exit 130.
    """
    root = Path(root).resolve()
    check_root(root)  # a file as --root: exit 2 before anything is created
    log = RunLog(root, "provision", sentinels=True)  # takes ROOT's lock before any write
    if on_event is not None:
        log.subscribe(on_event)
    report = ProvisionReport(port=manifest.comfyui.port)
    strict = manifest.validate_.strict if strict is None else strict
    started = time.monotonic()
    log.emit(
        "run_started",
        command="provision",
        root=str(root),
        models=len(manifest.models),
        nodes=len(manifest.nodes),
        workflows=len(manifest.workflows),
        strict=strict,
    )
    log.info("provision", f"{root} ({len(manifest.models)} models, {len(manifest.nodes)} nodes)")
    try:
        await _provision(
            manifest,
            root,
            log,
            report,
            strict=strict,
            start=start,
            start_timeout=start_timeout,
            content_store=content_store,
        )
        report.ok = True
    except (asyncio.CancelledError, KeyboardInterrupt):
        report.reason = "interrupted"
        report.seconds = time.monotonic() - started
        log.finish(False, "interrupted (run provision again to resume)")
        raise
    except Exception as exc:  # the error boundary: every failure ends as one verdict
        _record_failure(exc, root, log, report)
    report.seconds = time.monotonic() - started
    log.finish(report.ok, report.reason)
    return report


def _record_failure(exc: Exception, root: Path, log: RunLog, report: ProvisionReport) -> None:
    """Turn any failure (groups flattened, a full disk mapped, a bug kept) into the run's reason."""
    known = known_error(exc, root)
    if known is not None:
        report.reason = one_line(known)
        detail, context = str(known), {}
    else:
        from comfyfleet.tracebacks import save_traceback

        report.reason = internal_error(exc)
        report.traceback_file = save_traceback(exc, root / STATE_DIR)
        detail, context = report.reason, {"traceback": report.traceback_file}
    # With a full disk these lines may not fit; the verdict (finish) comes first.
    with contextlib.suppress(OSError, DiskFull):
        log.error("provision", detail, **context)


async def _provision(
    manifest: Manifest,
    root: Path,
    log: RunLog,
    report: ProvisionReport,
    *,
    strict: bool,
    start: bool,
    start_timeout: float,
    content_store: Path | None = None,
) -> None:
    phase = _Phases(log, report)

    if manifest.workflows:
        async with phase("workflows_check"):
            problems = check_workflows(manifest, root=root)
            if problems:
                for p in problems:
                    log.error("workflow", p)
                raise WorkflowError(
                    f"{len(problems)} workflow problem(s): "
                    + problems[0]
                    + (
                        ""
                        if len(problems) == 1
                        else f" (and {len(problems) - 1} more in provision.log)"
                    ),
                    hint="add the missing models to the manifest (or fix the workflow)",
                )

    pip_lock = asyncio.Lock()
    commit: str | None = None

    async def downloads() -> None:
        async with phase("download"):
            report.download = await download_all(manifest, root, log, content_store=content_store)

    async def install() -> None:
        nonlocal commit
        async with phase("install"):
            env = await comfyui_install.prepare_environment(manifest, root, log)
            checkout = await comfyui_install.checkout_comfyui(manifest, root, log)
            commit = report.comfyui_commit = checkout.commit
            async with asyncio.TaskGroup() as tg:
                tg.create_task(
                    comfyui_install.install_requirements(
                        manifest, root, log, env=env, pip_lock=pip_lock
                    )
                )
                nodes_task = tg.create_task(
                    install_nodes(manifest, root, log, env=env, pip_lock=pip_lock)
                )
            report.nodes = nodes_task.result()

    # A failure here is an ExceptionGroup (nested, from install's own TaskGroup): the boundary
    # in provision() flattens it once.
    async with asyncio.TaskGroup() as tg:
        tg.create_task(downloads())
        tg.create_task(install())

    failed_files = (
        [f for f in report.download.files if f.status == "failed"] if report.download else []
    )
    required_failed = [f for f in failed_files if f.required]
    for f in failed_files:
        if not f.required:
            log.info("WARNING", f"optional model {f.folder}/{f.filename} failed: {f.error}")
    for f in required_failed:
        if (f.error or "").startswith(DISK_FULL_PREFIX):
            # the disk is the cause, not this file: the verdict says so in its own words
            message, _, hint = (f.error or DISK_FULL_PREFIX).partition(" — ")
            raise DiskFull(message, hint=hint)
    if required_failed or (
        report.download is not None and not report.download.ok and not failed_files
    ):
        first = required_failed[0] if required_failed else None
        detail = f"{first.folder}/{first.filename}: {first.error}" if first else "see provision.log"
        raise ComfyfleetError(
            f"{len(required_failed) or 'some'} required model(s) failed to download ({detail})",
            hint="fix the cause shown and run provision again; verified files are kept",
        )
    critical_failed = [n for n in report.nodes if n.status == "failed" and n.critical]
    if critical_failed:
        n = critical_failed[0]
        raise ComfyfleetError(
            f"critical node {n.name} failed to install: {(n.error or '').splitlines()[0]}",
            hint="see provision.log for the command output",
        )

    if manifest.workflows:
        async with phase("workflows"):
            report.workflows = [str(p) for p in install_workflows(manifest, root)]

    async with phase("verify"):
        checks = await verify(
            manifest, root, strict=strict, node_status={n.name: n.status for n in report.nodes}
        )
        report.checks = checks
        for c in checks.checks:
            log.emit("validation", name=c.name, status=c.status, detail=c.detail)
            if c.status != "ok":
                log.info("check", f"{c.status.upper()} {c.name}: {c.detail}")
        if not checks.ok:
            bad = checks.failures()
            raise ValidationFailed(
                f"verification failed: {bad[0].name}: {bad[0].detail}"
                + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "")
                + (" [strict]" if strict and bad[0].status == "warn" else ""),
                hint="ComfyUI was not started; see the checks in provision.log",
            )

    if not start:
        log.info("comfyui", "not started (--no-start)")
        return
    async with phase("start"):
        fp = fingerprint(manifest, commit, report.nodes)
        info = await start_comfyui(
            manifest,
            root,
            nodes=report.nodes,
            fingerprint_=fp,
            on_info=lambda message: log.info("comfyui", message),
            start_timeout=start_timeout,
        )
        report.comfyui = info
        log.emit("comfyui_started", pid=info.pid, port=info.port, action=info.action)
        for w in info.report.warnings:
            log.info("WARNING", w)
        if not info.ready:
            raise RuntimeFailure(
                "ComfyUI is running but not ready: " + "; ".join(info.report.problems),
                hint=f"it is left running (pid {info.pid}) for inspection; see comfyui.log",
            )
        if strict and info.report.warnings:
            raise ValidationFailed("strict: " + info.report.warnings[0])
        log.emit(
            "comfyui_ready",
            pid=info.pid,
            port=info.port,
            url=f"http://{manifest.comfyui.listen}:{info.port}",
        )
        log.info(
            "comfyui",
            f"ready at http://{manifest.comfyui.listen}:{info.port} "
            f"(pid {info.pid}, {info.action})",
        )
