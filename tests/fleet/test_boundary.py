"""The fleet's boundaries: it uses the provisioner only through the public API, and the CLI
starts without loading the fleet's heavy dependencies."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import comfyfleet.fleet

FLEET = Path(comfyfleet.fleet.__file__).parent
#: shared plumbing (no provisioner logic) the fleet may use besides ``import comfyfleet``
SHARED = {"comfyfleet.errors", "comfyfleet.names", "comfyfleet.units", "comfyfleet.redact",
          "comfyfleet.retry"}  # fmt: skip
#: the `logs follow` library, which the fleet's SSH agent follows provisions with (issue 12)
#: (wave2: fleet-provisioning)
SHARED |= {"comfyfleet.logstream", "comfyfleet.logstream.core", "comfyfleet.logstream.markers",
           "comfyfleet.logstream.remote", "comfyfleet.logstream.sink"}  # fmt: skip


def imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m == "comfyfleet" or m.startswith("comfyfleet.")}


def test_the_fleet_reaches_the_provisioner_only_through_its_public_api() -> None:
    offenders = {}
    for path in sorted(FLEET.rglob("*.py")):
        bad = {
            m for m in imported_modules(path)
            if m != "comfyfleet" and not m.startswith("comfyfleet.fleet") and m not in SHARED
        }  # fmt: skip
        if bad:
            offenders[str(path.relative_to(FLEET))] = sorted(bad)
    assert offenders == {}


def test_pool_commands_load_the_store_only_when_run() -> None:
    code = (
        "import sys; import comfyfleet.cli as c; c._register(); "
        "print(sorted(m for m in ('sqlalchemy', 'alembic', 'comfyfleet.fleet.store') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
