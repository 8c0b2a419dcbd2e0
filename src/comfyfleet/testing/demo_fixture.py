"""The demo world, shared by ``comfyfleet demo`` and the test suite: one code path for both.

:func:`build_demo` publishes generated safetensors on a running
:class:`~comfyfleet.testing.modelserver.ModelServer`, builds local git repos (the stand-in
ComfyUI and one custom node), writes a workflow that uses the models, and writes the manifest
that ties them together.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from comfyfleet.testing.modelserver import ModelServer, make_safetensors
from comfyfleet.testing.repos import (
    LocalRepo,
    build_test_wheels,
    make_comfyui_repo,
    make_node_repo,
    offline_requirements,
)

DEMO_NODE_CLASS = "DemoHello"
MiB = 1024 * 1024


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass
class DemoModel:
    """A generated model file to serve."""

    folder: str
    filename: str
    size: int
    hf: bool = True
    seed: int = 0


DEFAULT_MODELS = [
    DemoModel("checkpoints", "demo_sd15.safetensors", 6 * MiB, seed=1),
    DemoModel("vae", "demo_vae.safetensors", 2 * MiB, seed=2),
    DemoModel("loras", "demo_style_lora.safetensors", 1 * MiB, hf=False, seed=3),
]


@dataclass
class DemoWorld:
    """What :func:`build_demo` made."""

    workdir: Path
    manifest_path: Path
    manifest: dict[str, Any]
    comfyui: LocalRepo
    node: LocalRepo
    port: int
    wheels: Path
    model_urls: dict[str, str] = field(default_factory=dict)


def demo_workflow(models: list[DemoModel], urls: dict[str, str]) -> dict[str, Any]:
    """A small UI-format workflow that loads the checkpoint and VAE and saves an image."""
    ckpt = next(m for m in models if m.folder == "checkpoints")
    vae = next((m for m in models if m.folder == "vae"), None)
    nodes: list[dict[str, Any]] = [
        {
            "id": 4,
            "type": "CheckpointLoaderSimple",
            "mode": 0,
            "widgets_values": [ckpt.filename],
            "properties": {
                "models": [
                    {"name": ckpt.filename, "url": urls[ckpt.filename], "directory": "checkpoints"}
                ]
            },
        },
        {"id": 9, "type": "SaveImage", "mode": 0, "widgets_values": ["ComfyUI"], "properties": {}},
    ]
    if vae is not None:
        nodes.insert(
            1, {"id": 10, "type": "VAELoader", "mode": 0, "widgets_values": [vae.filename]}
        )
    return {"last_node_id": 10, "last_link_id": 0, "nodes": nodes, "links": [], "version": 0.4}


def build_demo(
    workdir: Path,
    server: ModelServer,
    *,
    port: int | None = None,
    python: str = "",
    models: list[DemoModel] | None = None,
    extra_nodes: list[dict[str, Any]] | None = None,
    args: list[str] | None = None,
) -> DemoWorld:
    """Build the demo world under ``workdir`` against a running ``server``; return it.

    ``python``: comfyui.python for the manifest ("" = provision creates ROOT/venv);
    ``extra_nodes``: more ``[[nodes]]`` tables (tests add failing nodes this way).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    models = DEFAULT_MODELS if models is None else models
    port = port or free_port()
    wheels = build_test_wheels(workdir / "wheels")
    repos = workdir / "repos"
    comfyui = make_comfyui_repo(repos)
    node = make_node_repo(
        repos,
        "ComfyUI-DemoNode",
        [DEMO_NODE_CLASS],
        requirements=offline_requirements(wheels, "standin-helper==0.1.0"),
        imports=["standin_helper"],
    )
    urls: dict[str, str] = {}
    entries = []
    for m in models:
        data = make_safetensors(m.size, seed=m.seed)
        if m.hf:
            url = server.add_hf_file("comfyfleet-demo/models", f"{m.folder}/{m.filename}", data)
        else:
            url = server.add_file(f"demo/{m.filename}", data)
        urls[m.filename] = url
        entries.append({"url": url, "folder": m.folder, "filename": m.filename})
    workflow = workdir / "workflows" / "demo_t2i.json"
    workflow.parent.mkdir(parents=True, exist_ok=True)
    workflow.write_text(json.dumps(demo_workflow(models, urls), indent=2) if models else "{}")
    manifest: dict[str, Any] = {
        "version": 1,
        "comfyui": {
            "repo": comfyui.url,
            "ref": comfyui.tag,
            "python": python,
            "args": args or ["--listen", "127.0.0.1", "--port", str(port)],
        },
        "download": {"concurrency": 4, "connections_per_file": 2},
        "models": entries,
        "nodes": [
            {"repo": node.url, "ref": node.tag, "critical": True, "classes": [DEMO_NODE_CLASS]},
            *(extra_nodes or []),
        ],
        "validate": {"min_size": "1MiB", "require": {"checkpoints": 1}},
    }
    if any(m.folder == "checkpoints" for m in models):
        manifest["workflows"] = [
            {"path": "workflows/demo_t2i.json", "set": {"SaveImage.filename_prefix": "demo/out"}}
        ]
    manifest_path = workdir / "manifest.toml"
    write_manifest(manifest_path, manifest)
    return DemoWorld(workdir, manifest_path, manifest, comfyui, node, port, wheels, urls)


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Write a manifest dict as TOML."""
    path.write_text(tomli_w.dumps(manifest))
