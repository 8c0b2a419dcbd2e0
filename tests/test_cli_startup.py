"""CLI start-up stays light: `--help`, `status` and `stop` import no heavy library.

The fleet runs `comfyfleet status` over SSH on many machines, so its start-up is paid many
times. What is asserted is what gets imported, not how long it takes (timing lives in the
README, measured with ``python -X importtime``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("aiohttp", "asyncssh", "rich", "pydantic", "yaml")
_PROBE = (
    "import atexit, sys\n"
    f"HEAVY = {HEAVY!r}\n"
    "atexit.register(lambda: sys.stderr.write("
    "'IMPORTED ' + ' '.join(m for m in HEAVY if m in sys.modules) + '\\n'))\n"
    "sys.argv = ['comfyfleet', *sys.argv[1:]]\n"
    "from comfyfleet.cli import main\n"
    "main()\n"
)


def _imported(*args: str) -> tuple[set[str], subprocess.CompletedProcess[str]]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, timeout=60
    )
    line = next(ln for ln in done.stderr.splitlines() if ln.startswith("IMPORTED"))
    return set(line.split()[1:]), done


def test_help_imports_no_heavy_library():
    imported, done = _imported("--help")
    assert done.returncode == 0 and "provision" in done.stdout
    assert imported == set()


@pytest.mark.parametrize("command", ["status", "stop"])
def test_status_and_stop_import_neither_aiohttp_nor_asyncssh_nor_rich(command: str, tmp_path: Path):
    imported, done = _imported(command, "--root", str(tmp_path), "--json")
    assert '"running": false' in done.stdout or '"stopped": false' in done.stdout
    # typer >= 0.20 converts option values with pydantic itself; everything else stays out
    assert imported <= {"pydantic"}, imported
