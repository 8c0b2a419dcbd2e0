"""CLI start-up: `comfyfleet --help`, `status` and `stop`, which the fleet runs over SSH on many
machines. Target: well under 0.3 s each, with no aiohttp, asyncssh or rich imported.

    python benchmarks/cli_startup.py [--runs 15]

For each command: the median wall time of ``--runs`` fresh processes (Python start-up
included), the sum of the self import times reported by ``python -X importtime``, and which
heavy libraries were imported. ``status`` and ``stop`` run against an empty root (nothing
running), so they measure start-up, not ComfyUI.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from tempfile import TemporaryDirectory

HEAVY = ("aiohttp", "asyncssh", "rich", "pydantic", "yaml")
_RUN = (
    "import sys; sys.argv = ['comfyfleet', *sys.argv[1:]]; from comfyfleet.cli import main; main()"
)
_PROBE = (
    "import atexit, sys\n"
    f"atexit.register(lambda: sys.stderr.write('HEAVY ' + ' '.join(m for m in {HEAVY!r} "
    "if m in sys.modules) + '\\n'))\n" + _RUN.replace("; ", "\n")
)


def wall_ms(args: list[str], runs: int) -> float:
    """Median wall time of ``runs`` fresh ``comfyfleet ARGS`` processes, in ms."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", _RUN, *args], capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def import_ms(args: list[str]) -> float:
    """The sum of self import times (``-X importtime``), in ms."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", _RUN, *args], capture_output=True, text=True
    )
    rows = [ln for ln in done.stderr.splitlines() if ln.startswith("import time:")]
    total = 0
    for row in rows:
        field = row.split("|")[0].split(":")[1].strip()
        total += int(field) if field.isdigit() else 0
    return total / 1000


def heavy(args: list[str]) -> str:
    """The heavy libraries the command imported."""
    done = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True)
    line = next((ln for ln in done.stderr.splitlines() if ln.startswith("HEAVY")), "HEAVY ?")
    return line[len("HEAVY ") :] or "none"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    opts = parser.parse_args()
    with TemporaryDirectory() as root:
        commands = [["--help"], ["status", "--root", root, "--json"], ["stop", "--root", root]]
        print(f"{'command':10} {'wall (median)':>14} {'imports':>9}  heavy libraries imported")
        for args in commands:
            print(
                f"{args[0]:10} {wall_ms(args, opts.runs):11.0f} ms {import_ms(args):6.0f} ms"
                f"  {heavy(args)}"
            )


if __name__ == "__main__":
    main()
