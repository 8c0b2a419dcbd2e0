"""`comfyfleet check` probes concurrently: 100 entries vs 1 entry against a server that adds
50 ms to every request (a distant hub). Target: the 100-entry check takes < 3x the 1-entry one.

    python benchmarks/check_concurrency.py [--latency 0.05] [--entries 100]

The manifest mixes the sources like a real one: Hugging Face files (one HEAD each), Civitai
versions (download probe, CDN probe, API) and plain files (HEAD). Runs the library function the
CLI runs (`check_manifest`), in this process, against the local model server in a thread.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path
from tempfile import TemporaryDirectory

from comfyfleet.manifest import parse_manifest
from comfyfleet.preflight import check_manifest
from comfyfleet.testing.modelserver import ModelServer, make_safetensors


def build_manifest(server: ModelServer, n: int, kinds: str) -> dict:
    """``n`` entries cycling through ``kinds`` ("h" HF, "c" Civitai, "p" plain)."""
    models = []
    data = make_safetensors(4096)
    for i in range(n):
        kind = kinds[i % len(kinds)]
        server_id = len(server.requests) * 1000 + i  # unique Civitai ids across runs
        if kind == "h":
            url = server.add_hf_file(f"org/repo{i % 7}", f"split_files/m{i}.safetensors", data)
        elif kind == "c":
            url = server.add_civitai(server_id, data, f"civitai_{i}.safetensors")
        else:
            url = server.add_file(f"plain/m{i}.safetensors", data)
        models.append({"url": url, "folder": "checkpoints", "filename": f"m{i}.safetensors"})
    return {"version": 1, "models": models}


def timed_check(server: ModelServer, n: int, kinds: str, root: Path, repeats: int) -> float:
    manifest = parse_manifest(build_manifest(server, n, kinds))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        report = asyncio.run(check_manifest(manifest, root))
        best = min(best, time.perf_counter() - t0)
        bad = [e for e in report.entries if not e.ok]
        assert not bad, bad[:3]
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latency", type=float, default=0.05, help="seconds added per request")
    parser.add_argument("--entries", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3, help="best of N runs")
    args = parser.parse_args()

    server = ModelServer()
    server.start_in_thread()
    os.environ.update(server.endpoint_env())
    for var in ("HF_TOKEN", "CIVITAI_TOKEN", "CIVITAI_API_TOKEN"):
        os.environ.pop(var, None)
    server.latency = args.latency
    # Like against like: the 1-entry manifest holds the slowest kind of probe in the
    # 100-entry one (HF: 1 round trip; Civitai: 2 — download probe with the API in parallel,
    # then the CDN probe; plain: 1).
    scenarios = [("Hugging Face only", "h", "h"), ("mixed HF/Civitai/plain", "hhcp", "c")]
    ratios = []
    try:
        with TemporaryDirectory() as tmp:
            print(f"latency: {args.latency * 1000:.0f} ms per request (server-side); "
                  f"best of {args.repeats}")  # fmt: skip
            for name, kinds, single in scenarios:
                one = timed_check(server, 1, single, Path(tmp), args.repeats)
                many = timed_check(server, args.entries, kinds, Path(tmp), args.repeats)
                ratios.append(many / one)
                print(f"{name}: 1 entry {one:.3f} s, {args.entries} entries {many:.3f} s, "
                      f"ratio {many / one:.2f}x")  # fmt: skip
    finally:
        server.stop_thread()
    ok = all(r < 3 for r in ratios)
    print(f"target: every ratio < 3x -> {'PASS' if ok else 'FAIL'}")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
