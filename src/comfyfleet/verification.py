"""Post-install verification: models present and verified, nodes at their refs, ``[validate]``.

Each check is one row ``{"name", "status", "detail"}`` with status ``ok``, ``warn`` or
``fail``; a ``fail`` (or, with ``strict``, a ``warn``) makes the report not ok. ComfyUI is not
started when verification fails.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comfyfleet.download import load_verified
from comfyfleet.install.git import head_commit, resolve_local
from comfyfleet.manifest import (
    FOLDER_ALIASES,
    MODEL_EXTENSIONS,
    Manifest,
    ModelEntry,
    canonical_folder,
)
from comfyfleet.units import format_size


@dataclass
class Check:
    """One verification row."""

    name: str
    status: str  # ok | warn | fail
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        """JSON form (the ``checks[]`` entries of verify --json)."""
        return {"name": self.name, "status": self.status, "detail": self.detail}


@dataclass
class VerifyReport:
    """All checks and whether they pass (``strict``: warnings fail too)."""

    checks: list[Check] = field(default_factory=list)
    strict: bool = False

    @property
    def ok(self) -> bool:
        """True when nothing failed (and, under strict, nothing warned)."""
        bad = {"fail", "warn"} if self.strict else {"fail"}
        return not any(c.status in bad for c in self.checks)

    def failures(self) -> list[Check]:
        """The checks that make the report not ok."""
        bad = {"fail", "warn"} if self.strict else {"fail"}
        return [c for c in self.checks if c.status in bad]

    def add(self, name: str, status: str, detail: str = "") -> None:
        """Append a check."""
        self.checks.append(Check(name, status, detail))

    def to_json(self) -> dict[str, Any]:
        """The verify --json document."""
        return {"ok": self.ok, "strict": self.strict, "checks": [c.to_json() for c in self.checks]}


@dataclass
class ProvisionedModel:
    """A manifest entry and the file it resolved to (None when it is not on disk, verified)."""

    entry: ModelEntry
    filename: str | None
    path: Path | None
    verified: bool


def provisioned_models(manifest: Manifest, root: Path) -> list[ProvisionedModel]:
    """Resolve every manifest model to its file on disk and whether the engine verified it.

    An entry without ``filename`` (named by the server's Content-Disposition) is found in
    ``verified.json`` by its URL.
    """
    verified = load_verified(root)
    out = []
    for entry in manifest.models:
        folder_dir = manifest.model_dir(root, entry)
        filename = entry.filename
        if filename is None:
            for key, rec in verified.items():
                path = root / key
                if path.parent == folder_dir and rec.get("url") in {entry.url, *entry.mirrors}:
                    filename = path.name
                    break
        if filename is None:
            out.append(ProvisionedModel(entry, None, None, False))
            continue
        path = folder_dir / filename
        rel = os.path.relpath(path, root)
        out.append(ProvisionedModel(entry, filename, path, rel in verified))
    return out


def folder_dirs(manifest: Manifest, root: Path, key: str) -> list[Path]:
    """Every directory ComfyUI lists under ``key`` (the key's own and its legacy aliases)."""
    models = manifest.comfyui_dir(root) / "models"
    names = {key} | {alias for alias, target in FOLDER_ALIASES.items() if target == key}
    return [models / n for n in sorted(names)]


def count_models(manifest: Manifest, root: Path, key: str, min_size: int) -> list[Path]:
    """Model files (ComfyUI's extensions) under ``key`` at least ``min_size`` bytes."""
    found = []
    for directory in folder_dirs(manifest, root, key):
        for dirpath, _dirs, files in os.walk(directory, followlinks=True):
            for name in files:
                path = Path(dirpath) / name
                if path.suffix.lower() in MODEL_EXTENSIONS:
                    try:
                        if path.stat().st_size >= min_size:
                            found.append(path)
                    except OSError:
                        pass
    return found


async def verify(
    manifest: Manifest,
    root: Path,
    *,
    strict: bool | None = None,
    node_status: dict[str, str] | None = None,
) -> VerifyReport:
    """Check models, nodes and ``[validate]`` minimums; ``strict`` defaults to the manifest's.

    ``node_status`` (node name → ``installed|unchanged|failed``) from this run's install marks
    failed nodes even when their checkout exists.
    """
    report = VerifyReport(strict=manifest.validate_.strict if strict is None else strict)
    for model in provisioned_models(manifest, root):
        entry = model.entry
        name = f"model {entry.folder}/{entry.listed_as(model.filename or '(name from server)')}"
        bad = "fail" if entry.required else "warn"
        if model.path is None or not model.path.exists():
            report.add(name, bad, "missing" + ("" if entry.required else " (required = false)"))
        elif not model.verified:
            report.add(name, bad, "present but not verified by the downloader (run provision)")
        else:
            report.add(name, "ok", format_size(model.path.stat().st_size))

    comfy_dir = manifest.comfyui_dir(root)
    commit = await head_commit(comfy_dir)
    if commit is None:
        report.add("comfyui", "fail", f"{comfy_dir} is not a git checkout")
    else:
        want = await resolve_local(comfy_dir, manifest.comfyui.ref or None)
        if want is not None and want != commit:
            report.add(
                "comfyui",
                "fail",
                f"at {commit[:12]}, expected {manifest.comfyui.ref} ({want[:12]})",
            )
        else:
            report.add("comfyui", "ok", f"at {commit[:12]}")

    for node in manifest.nodes:
        name = f"node {node.name}"
        bad = "fail" if node.critical else "warn"
        dest = comfy_dir / "custom_nodes" / node.name
        commit = await head_commit(dest)
        status = (node_status or {}).get(node.name)
        if commit is None:
            report.add(name, bad, "not installed")
        elif status == "failed":
            report.add(name, bad, "install failed (see provision.log)")
        else:
            want = await resolve_local(dest, node.ref)
            if want is not None and want != commit:
                report.add(name, bad, f"at {commit[:12]}, expected {node.ref} ({want[:12]})")
            else:
                report.add(name, "ok", f"at {commit[:12]}")

    settings = manifest.validate_
    for section, level in (("require", "fail"), ("warn", "warn")):
        for key, minimum in getattr(settings, section).items():
            found = count_models(manifest, root, canonical_folder(key), settings.min_size)
            name = f"validate {section} {key} >= {minimum}"
            detail = f"{len(found)} file(s) of at least {format_size(settings.min_size)}"
            report.add(name, "ok" if len(found) >= minimum else level, detail)
    return report
