"""``comfyfleet download MANIFEST --root DIR [--json]``: every model, verified, in parallel."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from comfyfleet.cli.app import app, emit_json, run, run_async
from comfyfleet.cli.provision import CONTENT_STORE, WAIT_LOCK, locked_root
from comfyfleet.errors import Interrupted
from comfyfleet.progress import event_console
from comfyfleet.units import format_size

if TYPE_CHECKING:
    from comfyfleet.download import DownloadReport


def summary(report: DownloadReport) -> str:
    """The end summary: counts, bytes, wall time, mean throughput, and each failure."""
    lines = [
        f"downloads: {report.count('verified')} verified, {report.count('skipped')} "
        f"skipped (already present), {report.count('failed')} failed — "
        f"{format_size(report.bytes)} in {report.seconds:.1f}s "
        f"({format_size(report.throughput)}/s)"
    ]
    for f in report.files:
        if f.status == "failed":
            kind = "required" if f.required else "optional, ignored"
            lines.append(f"  FAILED ({kind}) {f.folder}/{f.filename}: {f.error}")
    lines.append("details: ROOT/.comfyfleet/errors.log" if report.count("failed") else "ok")
    return "\n".join(lines)


@app.command("download")
def download(
    manifest: Path = typer.Argument(..., help="The manifest (TOML or YAML)."),
    root: Path = typer.Option(..., "--root", help="Where ComfyUI and its models live."),
    wait_lock: bool = WAIT_LOCK,
    content_store: Path | None = CONTENT_STORE,
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document to stdout."),
) -> None:
    """Download every model of MANIFEST into ROOT, verified (exit 1 if a required one failed)."""

    def body() -> int:
        # imported here, not at the top: `comfyfleet --help` must not pay for aiohttp
        from comfyfleet.download import download_all
        from comfyfleet.events import RunLog
        from comfyfleet.manifest import load_manifest

        load_manifest(manifest)  # a bad manifest exits 2 before anything is created
        with locked_root(root, "download", wait=wait_lock):  # before anything under ROOT
            log = RunLog(root, "download")
            try:
                m = load_manifest(manifest)
                with event_console() as console:
                    log.subscribe(console.on_event)
                    report = run_async(
                        lambda: download_all(m, root, log, content_store=content_store),
                        resume_hint="partial downloads are kept as .part files — "
                        "run the same command again to resume",
                    )
            except Interrupted as exc:
                log.finish(False, "interrupted")
                if json_out:
                    emit_json({"ok": False, "interrupted": True, "files": [], "bytes": 0,
                               "seconds": round(log.elapsed, 3)})  # fmt: skip
                raise exc
            failed = [f for f in report.files if f.status == "failed" and f.required]
            log.finish(report.ok, "" if report.ok else f"{len(failed)} required file(s) failed")
            print(summary(report), file=sys.stderr if json_out else sys.stdout)
            if json_out:
                emit_json(report.to_json())
            return 0 if report.ok else 1

    doc = {"files": [], "bytes": 0, "seconds": None}
    run(body, json_doc=doc if json_out else None, root=root)
