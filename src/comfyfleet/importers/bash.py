"""A legacy bash provisioning script (ai-dock / Vast style) → a manifest in TOML.

The script declares bash arrays such as ``CHECKPOINT_MODELS=( "url" ... )`` and
``NODES=( "git url" ... )``. We read the arrays without running bash: quoting, ``#`` comments
and commented-out entries follow bash's rules (``shlex`` with comments). Every array maps to a
ComfyUI folder key; anything we cannot map becomes a comment in the output, so nothing is
silently dropped. The TOML is written by hand so it can carry those comments.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

#: array name → ComfyUI folder key
ARRAY_FOLDERS: dict[str, str] = {
    "CHECKPOINT_MODELS": "checkpoints",
    "VAE_MODELS": "vae",
    "LORA_MODELS": "loras",
    "UNET_MODELS": "diffusion_models",
    "DIFFUSION_MODELS": "diffusion_models",
    "CLIP_MODELS": "text_encoders",
    "TEXT_ENCODER_MODELS": "text_encoders",
    "TEXT_ENCODERS": "text_encoders",
    "CLIP_VISION_MODELS": "clip_vision",
    "MOTION_MODELS": "animatediff_models",
    "CONTROLNET_MODELS": "controlnet",
    "ESRGAN_MODELS": "upscale_models",
    "UPSCALE_MODELS": "upscale_models",
    "EMBEDDINGS": "embeddings",
    "EMBEDDING_MODELS": "embeddings",
    "IPADAPTER_MODELS": "ipadapter",
}
#: folders registered by custom nodes, not ComfyUI itself (go to comfyui.extra_folders)
NODE_FOLDERS = frozenset({"animatediff_models", "ipadapter"})
NODE_ARRAYS = frozenset({"NODES", "CUSTOM_NODES"})

_ARRAY_START = re.compile(
    r"^[ \t]*(?:(?:declare|typeset|local|readonly|export)(?:[ \t]+-[a-zA-Z]+)*[ \t]+)?"
    r"([A-Za-z_][A-Za-z0-9_]*)\+?=\(",
    re.MULTILINE,
)


@dataclass
class ImportedScript:
    """What was read from the script: models, nodes and what could not be mapped."""

    models: list[tuple[str, str, list[str]]] = field(default_factory=list)  # url, folder, notes
    nodes: list[str] = field(default_factory=list)
    extra_folders: list[str] = field(default_factory=list)
    unmapped: list[str] = field(default_factory=list)  # comment lines


def _array_body(text: str, start: int) -> tuple[str, int]:
    """The text between ``(`` at ``start`` and its closing ``)`` (quotes and comments aware)."""
    i, quote = start, ""
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\" and quote == '"':
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == "\\":
            i += 1
        elif ch == "#" and (i == start or text[i - 1] in " \t\n("):
            nl = text.find("\n", i)
            i = len(text) if nl < 0 else nl
            continue
        elif ch == ")":
            return text[start:i], i + 1
        i += 1
    return text[start:], len(text)


def read_arrays(text: str) -> dict[str, list[str]]:
    """Every ``NAME=( ... )`` array of a bash script, items unquoted, comments dropped."""
    arrays: dict[str, list[str]] = {}
    pos = 0
    while m := _ARRAY_START.search(text, pos):
        body, pos = _array_body(text, m.end())
        try:
            items = shlex.split(body, comments=True)
        except ValueError:  # unbalanced quotes: keep what splits by whitespace
            items = [w.strip("\"'") for w in body.split() if not w.startswith("#")]
        arrays.setdefault(m.group(1), []).extend(items)
    return arrays


def _clean_url(url: str) -> tuple[str | None, list[str]]:
    """A manifest-ready URL and notes, or None when it cannot be used as is."""
    notes: list[str] = []
    if "$" in url or "`" in url:
        return None, ["uses a shell variable"]
    if not re.match(r"^https?://[^/\s]+", url):
        return None, ["not an http(s) URL"]
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(k.lower() == "token" for k, _ in query):
        query = [(k, v) for k, v in query if k.lower() != "token"]
        notes.append("token removed from the URL: set CIVITAI_TOKEN in the environment instead")
    path = parts.path
    if parts.hostname in ("huggingface.co", "hf.co") and "/blob/" in path:
        path = path.replace("/blob/", "/resolve/", 1)
        notes.append("/blob/ (the web page) changed to /resolve/ (the file)")
    if parts.hostname in ("civitai.com", "www.civitai.com") and path.startswith("/models/"):
        return None, ["a Civitai model page, not a download URL (/api/download/models/<versionId>)"]
    return urlunsplit((parts.scheme, parts.netloc, path, urlencode(query), parts.fragment)), notes


def import_bash_script(text: str) -> ImportedScript:
    """Map a legacy script's arrays to models, nodes and comments."""
    out = ImportedScript()
    for name, items in read_arrays(text).items():
        if name in NODE_ARRAYS:
            for item in items:
                url, notes = _clean_url(item)
                if url is None:
                    out.unmapped.append(f"{name}: {item} ({'; '.join(notes)})")
                else:
                    out.nodes.append(url)
            continue
        folder = ARRAY_FOLDERS.get(name)
        if folder is None:
            if items:
                out.unmapped.append(f"{name} (no ComfyUI model folder for this array):")
                out.unmapped += [f"  {item}" for item in items]
            continue
        if folder in NODE_FOLDERS and folder not in out.extra_folders:
            out.extra_folders.append(folder)
        for item in items:
            url, notes = _clean_url(item)
            if url is None:
                out.unmapped.append(f"{name}: {item} ({'; '.join(notes)})")
            else:
                out.models.append((url, folder, notes))
    return out


def _s(value: str) -> str:
    """A TOML basic string (JSON string escapes are valid TOML)."""
    return json.dumps(value, ensure_ascii=False)


def _comment(text: str) -> str:
    return "# " + text.replace("\n", " ")


def manifest_toml_from_bash(text: str, source: str = "script") -> str:
    """The manifest (TOML text, with comments) for a legacy bash provisioning script."""
    imp = import_bash_script(text)
    lines = [
        _comment(f"Imported by `comfyfleet import` from {Path(source).name}."),
        '# Review before use: pin every node with ref = "<commit or tag>", then run',
        "# `comfyfleet check` on this file (it finds wrong URLs, gated repos and missing tokens).",
        "version = 1",
        "",
        "[comfyui]",
        "extra_folders = [" + ", ".join(_s(f) for f in imp.extra_folders) + "]",
        "",
    ]
    for url, folder, notes in imp.models:
        lines.append("[[models]]")
        lines += [_comment(n) for n in notes]
        lines += [f"url = {_s(url)}", f"folder = {_s(folder)}", ""]
    for repo in imp.nodes:
        lines.append("[[nodes]]")
        lines.append('# unpinned: the legacy script installed the default branch; add ref = "..."')
        lines += [f"repo = {_s(repo)}", ""]
    if imp.unmapped:
        lines.append("# Not imported (no manifest equivalent; handle these by hand):")
        lines += [_comment(u) for u in imp.unmapped]
        lines.append("")
    return "\n".join(lines)
