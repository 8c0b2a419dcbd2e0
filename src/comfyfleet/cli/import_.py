"""``comfyfleet import FILE``: a TOML manifest on stdout, from a legacy bash provisioning
script or (``.json``) a ComfyUI workflow."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from comfyfleet.cli.app import app, run
from comfyfleet.errors import UsageError


@app.command("import")
def import_(
    file: Path = typer.Argument(..., help="A legacy bash provisioning script or a workflow .json."),
) -> None:
    """Write a manifest (TOML) for FILE to stdout: a legacy bash provisioning script (arrays
    like CHECKPOINT_MODELS, NODES) or a ComfyUI workflow JSON."""

    def body() -> int:
        if not file.is_file():
            raise UsageError(f"{file}: no such file")
        if file.suffix.lower() == ".json":
            sys.stdout.write(_from_workflow(file))
        else:
            from comfyfleet.importers.bash import manifest_toml_from_bash

            try:
                text = file.read_text(encoding="utf-8", errors="replace")
            except OSError as exc:
                raise UsageError(f"{file}: cannot read: {exc}") from None
            sys.stdout.write(manifest_toml_from_bash(text, source=str(file)))
        return 0

    run(body)


def _from_workflow(path: Path) -> str:
    import tomli_w

    from comfyfleet.install.workflows import manifest_from_workflow, unresolved_models

    text = tomli_w.dumps(manifest_from_workflow(path))
    missing = unresolved_models(path)
    if missing:
        text += "\n# Needed by the workflow but without a URL (add [[models]] entries by hand):\n"
        text += "".join(f"# {line}\n" for line in missing)
    return text
