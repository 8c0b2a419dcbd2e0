"""Command-line entry point: thin shells over the library, one module per command group."""

from __future__ import annotations

from comfyfleet.cli.app import app


def _register() -> None:
    # Each module adds its commands to `app` on import; a missing one is a packaging bug.
    from comfyfleet.cli import check, demo, download, import_, logs, pool, provision  # noqa: F401


def main() -> None:
    """Console-script entry point."""
    _register()
    app()


__all__ = ["app", "main"]
