"""``comfyfleet import FILE [-o MANIFEST]``: a TOML manifest from a provisioning script or a
ComfyUI workflow (``.json``), read statically and offline."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from comfyfleet.cli.app import app, run
from comfyfleet.errors import NothingToImport, UsageError


@app.command("import")
def import_(
    file: Path = typer.Argument(..., help="A provisioning script (bash) or a workflow .json."),
    output: Path | None = typer.Option(
        None,
        "-o",
        "--output",
        help="Write the manifest here (workflow paths relative to it) instead of stdout.",
    ),
) -> None:
    """Write a manifest (TOML) for FILE: a provisioning script in any common style (ai-dock or
    Vast arrays, wget/curl/aria2c/hf download lines, git clone) or a ComfyUI workflow JSON.
    Everything not imported is named on stderr and in comments, with its line."""

    def body() -> int:
        from comfyfleet.importers import SCRIPT_STYLES, import_bash_script, render
        from comfyfleet.importers.workflow import import_workflow

        if not file.is_file():
            raise UsageError(f"{file}: no such file")
        if file.suffix.lower() == ".json":
            from comfyfleet.errors import WorkflowError

            try:
                result = import_workflow(file, manifest_path=output)
            except WorkflowError as exc:
                raise UsageError(exc.message, hint=exc.hint) from None
        else:
            try:
                text = file.read_text(encoding="utf-8", errors="replace")
            except OSError as exc:
                raise UsageError(f"{file}: cannot read: {exc}") from None
            result = import_bash_script(text, source=str(file))
        for skipped in result.skipped:
            print(f"import: {file.name}: {skipped.describe()}", file=sys.stderr)
        if result.empty and not result.workflows:
            raise NothingToImport(
                f"{file}: no model and no custom node found",
                hint="the script importer reads: " + "; ".join(SCRIPT_STYLES),
            )
        text = render(result)
        if output is None:
            sys.stdout.write(text)
        else:
            try:
                output.write_text(text, encoding="utf-8")
            except OSError as exc:
                raise UsageError(f"{output}: cannot write: {exc}") from None
            print(f"wrote {output}", file=sys.stderr)
        return 0

    run(body)
