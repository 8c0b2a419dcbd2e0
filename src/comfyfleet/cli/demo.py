"""``comfyfleet demo``: the whole provisioning flow offline, in about a minute.

Reuses the test suite's world (:mod:`comfyfleet.testing.demo_fixture`): a local model server with
generated safetensors, local git repos of the stand-in ComfyUI and one custom node, a workflow
and a manifest — then runs the real ``provision`` on them. ComfyUI is left running, as
``provision`` leaves it; the model server is stopped.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from comfyfleet.cli.app import app, run, run_async


def _fresh_default() -> Path:
    base = Path.cwd() / "comfyfleet-demo"
    candidate, n = base, 1
    while candidate.exists() and any(candidate.iterdir()):
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


@app.command()
def demo(
    root: Path = typer.Option(
        None, "--root", help="Where to provision (default: a fresh ./comfyfleet-demo directory)."
    ),
    pool: bool = typer.Option(
        False, "--pool", help="A local pool of two instances with its dashboard, until Ctrl-C."
    ),
) -> None:
    """Run check → download → install → verify → start → ready offline, with a stand-in ComfyUI."""
    if pool:  # (fleet-dashboard) the fleet's demo: pool serve + dashboard on the demo world
        from comfyfleet.cli.demo_pool import run_pool_demo

        run(lambda: run_pool_demo((root or _fresh_default()).resolve()))
    from comfyfleet.cli.provision import render_event
    from comfyfleet.manifest import load_manifest
    from comfyfleet.preflight import check_manifest
    from comfyfleet.progress import event_console
    from comfyfleet.provisioning import provision
    from comfyfleet.testing.demo_fixture import build_demo
    from comfyfleet.testing.modelserver import ModelServer

    def out(line: str = "") -> None:
        print(line, file=sys.stderr, flush=True)

    def body() -> int:
        target = (root or _fresh_default()).resolve()
        target.mkdir(parents=True, exist_ok=True)
        server = ModelServer()
        server.start_in_thread()
        try:
            # The demo's "Hugging Face" is the local server (huggingface_hub's HF_ENDPOINT rule).
            os.environ.update(server.endpoint_env())
            world = build_demo(target / "demo-world", server)
            out(f"comfyfleet demo in {target}")
            out(f"  model server      {server.base_url} ({len(world.model_urls)} generated models)")
            out(f"  ComfyUI repo      {world.comfyui.url} (stand-in: serves ComfyUI's API)")
            out(f"  custom node repo  {world.node.url}")
            out(f"  manifest          {world.manifest_path}")
            out()
            manifest = load_manifest(world.manifest_path)
            out("==> check (what `comfyfleet check` tells before a GPU minute is spent)")
            checked = run_async(
                lambda: check_manifest(manifest, target), resume_hint="run the demo again"
            )
            for e in checked.entries:
                out(f"    {e.status:4} {e.folder}/{e.filename}: {e.message}")
            with event_console(render_event) as console:
                report = run_async(
                    lambda: provision(manifest, target, on_event=console.on_event),
                    resume_hint="run the demo again",
                )
        finally:
            server.stop_thread()
        out()
        doc = report.to_json()
        out("summary")
        for f in doc["files"]:
            out(f"  model  {f['status']:9} {f['folder']}/{f['filename']} ({f['bytes']} bytes)")
        for n in doc["nodes"]:
            name = n["repo"].rsplit("/", 1)[-1]
            out(f"  node   {n['status']:9} {name} @ {(n['commit'] or '')[:12]}")
        out(
            "  phases " + ", ".join(f"{k} {v:.1f}s" for k, v in doc["phases"].items())
            + f"; total {doc['seconds']:.1f}s"
        )  # fmt: skip
        out(f"  logs   {target / '.comfyfleet' / 'provision.log'}, comfyui.log, events.jsonl")
        if not report.ok:
            out(f"FAILED: {report.reason}")
            return 1
        info = report.comfyui
        if info is not None:
            out(f"  ComfyUI (stand-in) ready at http://127.0.0.1:{info.port} (pid {info.pid})")
            out("  (the stand-in reports a simulated CUDA device; a real box reports its GPU)")
            out()
            out(f"  status:  comfyfleet status --root {target}")
            out(f"  stop:    comfyfleet stop --root {target}")
            out(f"  re-run:  comfyfleet provision {world.manifest_path} --root {target}")
        return 0

    run(body)
