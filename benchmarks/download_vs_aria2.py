#!/usr/bin/env python3
"""comfyfleet download vs aria2c, same server, same connection budget, alternating runs.

    python benchmarks/download_vs_aria2.py [--files 4] [--size 128MiB] [--rate 4MiB]
                                           [--connections 16] [--rounds 2] [--no-legacy]

A model server (comfyfleet.testing.modelserver, in its own process) serves ``--files`` random
files and caps every connection at ``--rate`` bytes/s (as a CDN or a throttled host does).
Each round times, one after the other:

  (a) ``comfyfleet download`` (a subprocess; sha256 verified; concurrency = files,
      connections_per_file = connections),
  (b) ``aria2c -j FILES -x16 -s16 -k1M --file-allocation=falloc`` with ``--checksum=sha-256``
      per file (one input file listing all) — the same budget of FILES × 16 connections,
  (c) the legacy pattern ``aria2c -j4 -x1`` (what the old bash provisioner ran).

It prints a table (median wall time, throughput, comfyfleet's peak RSS including children)
and the ratios the issue sets as targets: comfyfleet ≤ 1.0× aria2c, ≥ 3× faster than legacy,
peak RSS < 200 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from comfyfleet.units import format_size, parse_size


def serve(directory: Path, rate: int) -> None:
    """The server process: serve every file in ``directory`` at /files/<name>, print the URL."""
    from comfyfleet.testing.modelserver import Faults, ModelServer

    async def main() -> None:
        srv = ModelServer()
        await srv.start()
        for path in sorted(directory.iterdir()):
            srv.add_file(path.name, path, faults=Faults(rate=rate))
        print(srv.base_url, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await srv.stop()

    asyncio.run(main())


def make_files(directory: Path, n: int, size: int) -> dict[str, str]:
    """``n`` random files of ``size`` bytes; returns name → sha256."""
    directory.mkdir(parents=True, exist_ok=True)
    hashes = {}
    for i in range(n):
        name = f"model_{i}.bin"
        h = hashlib.sha256()
        with open(directory / name, "wb") as fh:
            left = size
            block = os.urandom(4 * 1024 * 1024)
            while left:
                chunk = block[: min(left, len(block))]
                chunk = i.to_bytes(4, "little") + chunk[4:] if left == size else chunk
                fh.write(chunk)
                h.update(chunk)
                left -= len(chunk)
        hashes[name] = h.hexdigest()
    return hashes


class PeakRSS:
    """Polls a process tree's summed RSS on a thread; ``peak`` in bytes."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
                rss = sum(p.memory_info().rss for p in procs if p.is_running())
                self.peak = max(self.peak, rss)
            except psutil.Error:
                pass
            self._stop.wait(0.05)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def timed(argv: list[str], *, rss: bool = False) -> tuple[float, int]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    watch = PeakRSS(proc.pid) if rss else None
    _, err = proc.communicate()
    seconds = time.perf_counter() - t0
    peak = watch.stop() if watch else 0
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({proc.returncode}): {err.decode()[-2000:]}")
    return seconds, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--size", default="128MiB", help="bytes per file")
    ap.add_argument("--rate", default="4MiB", help="per-connection cap, bytes/s")
    ap.add_argument("--connections", type=int, default=16, help="per file (aria2c caps at 16)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-legacy", action="store_true", help="skip the slow legacy pattern")
    ap.add_argument("--workdir", default=None, help="where files are written (default: a tmp dir)")
    ap.add_argument("--serve", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    rate = parse_size(args.rate)
    if args.serve:
        serve(Path(args.serve), rate)
        return
    if not shutil.which("aria2c"):
        raise SystemExit("aria2c is not installed (apt-get install aria2)")
    size, n, k = parse_size(args.size), args.files, args.connections

    work = Path(tempfile.mkdtemp(prefix="cf-bench-", dir=args.workdir))
    try:
        hashes = make_files(work / "served", n, size)
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(work / "served"), "--rate", str(rate)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # aiohttp logs every client that hangs up early
            text=True,
        )
        base = server.stdout.readline().strip()  # type: ignore[union-attr]
        try:
            results = run_all(work, base, hashes, n, k, args.rounds, not args.no_legacy)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(10)
        report(results, n, size, rate, k, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_all(work, base, hashes, n, k, rounds, legacy) -> dict[str, list[tuple[float, int]]]:
    manifest = work / "manifest.toml"
    lines = [
        "[download]",
        f"concurrency = {n}",
        f"connections_per_file = {k}",
        "[comfyui]",
        'path = "C"',
    ]
    for name, digest in hashes.items():
        lines += [
            "[[models]]",
            f'url = "{base}/files/{name}"',
            'folder = "checkpoints"',
            f'sha256 = "{digest}"',
        ]
    manifest.write_text("\n".join(lines) + "\n")
    aria_in = work / "aria2.txt"
    aria_in.write_text(
        "".join(
            f"{base}/files/{name}\n  out={name}\n  checksum=sha-256={digest}\n"
            for name, digest in hashes.items()
        )
    )
    out = work / "out"
    comfyfleet = [sys.executable, "-m", "comfyfleet.cli", "download"]
    if shutil.which("comfyfleet"):
        comfyfleet = [shutil.which("comfyfleet"), "download"]  # type: ignore[list-item]
    common = ["--allow-overwrite=true", "--auto-file-renaming=false", "--console-log-level=warn",
              "--summary-interval=0", "--check-certificate=false"]  # fmt: skip
    tools = {
        "comfyfleet": lambda: [*comfyfleet, str(manifest), "--root", str(out), "--json"],
        f"aria2c -j{n} -x16 -s16 -k1M": lambda: [
            "aria2c", "-i", str(aria_in), "-d", str(out), f"-j{n}", "-x16", "-s16", "-k1M",
            "--file-allocation=falloc", *common,
        ],
        "legacy aria2c -j4 -x1": lambda: [
            "aria2c", "-i", str(aria_in), "-d", str(out), "-j4", "-x1", "-s1", *common,
        ],
    }  # fmt: skip
    if not legacy:
        tools.pop("legacy aria2c -j4 -x1")
    results: dict[str, list[tuple[float, int]]] = {t: [] for t in tools}
    for r in range(rounds):
        for name, argv in tools.items():  # alternate: a, b, c, a, b, c
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            subprocess.run(["sync"], check=False)
            seconds, peak = timed(argv(), rss=name == "comfyfleet")
            results[name].append((seconds, peak))
            print(f"round {r + 1}: {name:32s} {seconds:7.2f} s", file=sys.stderr, flush=True)
    shutil.rmtree(out, ignore_errors=True)
    return results


def report(results, n, size, rate, k, args) -> None:
    total = n * size
    print(
        f"\n{n} files × {format_size(size)}, each connection capped at {format_size(rate)}/s, "
        f"budget {n}×{k} connections, {args.rounds} alternating rounds, {os.cpu_count()} CPUs\n"
    )
    print(f"| {'tool':34s} | {'median s':>8s} | {'MiB/s':>7s} | {'peak RSS':>9s} |")
    print(f"|{'-' * 36}|{'-' * 10}|{'-' * 9}|{'-' * 11}|")
    med = {}
    for name, runs in results.items():
        med[name] = statistics.median(s for s, _ in runs)
        peak = max(p for _, p in runs)
        rss = format_size(peak) if peak else "-"
        print(f"| {name:34s} | {med[name]:8.2f} | {total / med[name] / 2**20:7.1f} | {rss:>9s} |")
    cf = med["comfyfleet"]
    aria = next(v for k_, v in med.items() if k_.startswith("aria2c"))
    print(f"\ncomfyfleet / aria2c best = {cf / aria:.2f}×  (target ≤ 1.0×)")
    if "legacy aria2c -j4 -x1" in med:
        print(f"legacy / comfyfleet     = {med['legacy aria2c -j4 -x1'] / cf:.2f}×  (target ≥ 3×)")
    peak = max(p for _, p in results["comfyfleet"])
    print(f"comfyfleet peak RSS     = {format_size(peak)}  (target < 200 MB)")


if __name__ == "__main__":
    main()
