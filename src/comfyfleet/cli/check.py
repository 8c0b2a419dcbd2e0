"""``comfyfleet check MANIFEST [--root DIR] [--json]``: preflight, downloads nothing."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from comfyfleet.cli.app import app, emit_json, run, run_async
from comfyfleet.redact import redact_text
from comfyfleet.units import format_size

if TYPE_CHECKING:
    from comfyfleet.preflight import CheckReport

_STYLE = {"ok": "green", "not_found": "red", "server_error": "yellow", "unreachable": "yellow"}


@app.command()
def check(
    manifest: Path = typer.Argument(..., help="The manifest (TOML or YAML)."),
    root: Path = typer.Option(Path("."), "--root", help="Where models would land (disk check)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document to stdout."),
) -> None:
    """Check that every model in MANIFEST will download (names, access, tokens, disk space),
    without downloading anything. Exit 0 when every required entry is ok, 1 otherwise."""

    def body() -> int:
        from comfyfleet.manifest import load_manifest
        from comfyfleet.preflight import check_manifest

        loaded = load_manifest(manifest)
        if not json_out:
            print(f"checking {len(loaded.models)} model(s) from {manifest} …", file=sys.stderr)
        report = run_async(
            lambda: check_manifest(loaded, root), resume_hint="nothing was changed; run it again"
        )
        if json_out:
            emit_json(report.to_json())
        elif sys.stdout.isatty():
            _print_table(report)
        else:
            _print_plain(report)
        return 0 if report.ok else 1

    skeleton = {"entries": [], "disk": {"free": None, "needed": None}}
    run(body, json_doc=skeleton if json_out else None)


def _size(n: int | None) -> str:
    return format_size(n) if n is not None else "?"


def _summary_lines(report: CheckReport) -> list[str]:
    d = report.disk
    total = sum(e.size or 0 for e in report.entries)
    lines = [
        f"models: {sum(e.ok for e in report.entries)}/{len(report.entries)} ok, "
        f"{_size(total)} in total",
        f"disk: {_size(d.free)} free under {d.path}; needed {_size(d.needed)} "
        f"+ {_size(d.headroom)} headroom — {'enough' if d.sufficient else 'NOT ENOUGH'}"
        + (f" ({d.unknown_sizes} size(s) unknown)" if d.unknown_sizes else ""),
    ]
    lines += [f"warning: {w}" for w in report.warnings]
    lines += [f"error: {e}" for e in report.node_errors]
    lines.append("check passed" if report.ok else "check FAILED")
    return [redact_text(line) for line in lines]


def _print_plain(report: CheckReport) -> None:
    for e in report.entries:
        flag = "" if e.required else " (optional)"
        print(f"{e.status:<22} {e.folder}/{e.filename or '?'}{flag}  {_size(e.size)}  {e.url}")
        if e.message:
            print(f"    {e.message}")
        for s in e.suggestions:
            print(f"    suggestion: {s}")
    for line in _summary_lines(report):
        print(line)


def _print_table(report: CheckReport) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    table = Table(show_lines=False)
    for col in ("status", "folder/file", "size", "details"):
        table.add_column(col, overflow="fold")
    for e in report.entries:
        style = _STYLE.get(e.status, "red" if e.required else "yellow")
        details = e.message + "".join(f"\n→ {s}" for s in e.suggestions)
        name = f"{e.folder}/{e.filename or '?'}" + ("" if e.required else " (optional)")
        table.add_row(f"[{style}]{e.status}[/]", escape(name), _size(e.size), escape(details))
    console.print(table, markup=True)
    for line in _summary_lines(report):
        console.print(line, markup=False, highlight=False)
