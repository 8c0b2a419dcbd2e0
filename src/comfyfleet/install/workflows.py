"""Workflows: what models they need, cross-checked against the manifest; output settings; install.

Both formats ComfyUI writes are read:

- **UI format** (what the editor saves): ``{"nodes": [{"id", "type", "widgets_values",
  "properties": {"models": [{name, url, directory, hash?}]}, "mode"}], "definitions":
  {"subgraphs": [{"nodes": [...]}]}}`` — widget values are positional;
- **API format** (what ``POST /prompt`` takes): ``{"<id>": {"class_type", "inputs": {...}}}``.

A model is needed when a node's ``properties.models[]`` lists it, or when a core loader's file
widget names it (:data:`LOADER_INPUTS`; add a class there to teach the check a new loader).
Nodes that are muted or bypassed are not run by ComfyUI and need nothing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

from comfyfleet.errors import WorkflowError
from comfyfleet.events import write_atomic
from comfyfleet.manifest import FOLDER_ALIASES, Manifest, canonical_folder

#: loader class → its file inputs: (input name, widget index in UI format, folder key)
LOADER_INPUTS: dict[str, list[tuple[str, int, str]]] = {
    "CheckpointLoaderSimple": [("ckpt_name", 0, "checkpoints")],
    "VAELoader": [("vae_name", 0, "vae")],
    "LoraLoader": [("lora_name", 0, "loras")],
    "LoraLoaderModelOnly": [("lora_name", 0, "loras")],
    "UNETLoader": [("unet_name", 0, "diffusion_models")],
    "CLIPLoader": [("clip_name", 0, "text_encoders")],
    "DualCLIPLoader": [("clip_name1", 0, "text_encoders"), ("clip_name2", 1, "text_encoders")],
    "TripleCLIPLoader": [
        ("clip_name1", 0, "text_encoders"),
        ("clip_name2", 1, "text_encoders"),
        ("clip_name3", 2, "text_encoders"),
    ],
    "CLIPVisionLoader": [("clip_name", 0, "clip_vision")],
    "ControlNetLoader": [("control_net_name", 0, "controlnet")],
    "UpscaleModelLoader": [("model_name", 0, "upscale_models")],
}

#: output class → its widgets in UI-format order (``widgets_values`` positions) for ``set``
OUTPUT_WIDGETS: dict[str, list[str]] = {
    "SaveImage": ["filename_prefix"],
    "SaveAnimatedWEBP": ["filename_prefix", "fps", "lossless", "quality", "method"],
    "SaveAnimatedPNG": ["filename_prefix", "fps", "compress_level"],
    "SaveVideo": ["filename_prefix", "format", "codec"],
    # VideoHelperSuite; newer versions save widgets_values as a dict keyed by name
    "VHS_VideoCombine": [
        "frame_rate",
        "loop_count",
        "filename_prefix",
        "format",
        "pingpong",
        "save_output",
    ],
}

#: LiteGraph node modes: 2 = never (muted), 4 = bypass
_INACTIVE_MODES = {2, 4}


@dataclass
class WorkflowNode:
    """One node of a workflow, in either format."""

    id: str
    class_type: str
    mode: int = 0
    widgets: list[Any] | dict[str, Any] | None = None
    inputs: dict[str, Any] = field(default_factory=dict)
    properties: dict[str, Any] = field(default_factory=dict)
    #: "" for top-level nodes, else the subgraph's name or id
    subgraph: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def label(self) -> str:
        """``node 37 (UNETLoader)``, with the subgraph when inside one."""
        where = f" in subgraph {self.subgraph!r}" if self.subgraph else ""
        return f"node {self.id} ({self.class_type}){where}"


@dataclass
class Workflow:
    """A parsed workflow file."""

    path: Path
    format: str  # "ui" | "api"
    data: dict[str, Any]
    nodes: list[WorkflowNode]


@dataclass
class ModelNeed:
    """A model file a workflow needs."""

    workflow: str
    node: WorkflowNode
    key: str
    filename: str
    url: str | None = None
    sha256: str | None = None
    directory: str | None = None

    def describe(self) -> str:
        """``wan.json: node 37 (UNETLoader) needs diffusion_models/x.safetensors``."""
        return f"{self.workflow}: {self.node.label} needs {self.key}/{self.filename}"


# --- parsing -------------------------------------------------------------------------------


def load_workflow(path: Path) -> Workflow:
    """Read a UI- or API-format workflow; WorkflowError if the file is not one."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WorkflowError(
            f"workflow {path}: no such file", hint="check [[workflows]] path"
        ) from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise WorkflowError(f"workflow {path}: not valid JSON: {exc}") from None
    return parse_workflow(data, Path(path))


def parse_workflow(data: Any, path: Path = Path("workflow.json")) -> Workflow:
    """Parse already-loaded workflow JSON."""
    if isinstance(data, dict) and isinstance(data.get("nodes"), list):
        nodes = [_ui_node(n, "") for n in data["nodes"] if isinstance(n, dict)]
        definitions = data.get("definitions")
        subgraphs = definitions.get("subgraphs") if isinstance(definitions, dict) else None
        for sub in subgraphs if isinstance(subgraphs, list) else []:
            if not isinstance(sub, dict):
                continue
            name = str(sub.get("name") or sub.get("id") or "subgraph")
            nodes += [_ui_node(n, name) for n in sub.get("nodes") or [] if isinstance(n, dict)]
        return Workflow(path, "ui", data, nodes)
    if (
        isinstance(data, dict)
        and data
        and all(isinstance(v, dict) and "class_type" in v for v in data.values())
    ):
        nodes = [
            WorkflowNode(
                id=str(node_id),
                class_type=str(node["class_type"]),
                inputs=node.get("inputs") if isinstance(node.get("inputs"), dict) else {},
                raw=node,
            )
            for node_id, node in data.items()
        ]
        return Workflow(path, "api", data, nodes)
    raise WorkflowError(
        f"workflow {path.name}: not a ComfyUI workflow (neither UI format with 'nodes' nor "
        "API format with 'class_type' entries)",
        hint="export the workflow from ComfyUI (Save, or Export (API))",
    )


def _ui_node(node: dict[str, Any], subgraph: str) -> WorkflowNode:
    widgets = node.get("widgets_values")
    props = node.get("properties")
    mode = node.get("mode")
    return WorkflowNode(
        id=str(node.get("id")),
        class_type=str(node.get("type") or ""),
        mode=mode if isinstance(mode, int) else 0,
        widgets=widgets if isinstance(widgets, list | dict) else None,
        properties=props if isinstance(props, dict) else {},
        subgraph=subgraph,
        raw=node,
    )


def _clean_name(value: str) -> str:
    # Workflows saved on Windows name subfolders with backslashes; ComfyUI lists "/".
    return value.replace("\\", "/").strip()


def model_needs(workflow: Workflow) -> list[ModelNeed]:
    """Every model file the workflow's active nodes need (deduplicated per node)."""
    name = workflow.path.name
    out: list[ModelNeed] = []
    for node in workflow.nodes:
        if node.mode in _INACTIVE_MODES:
            continue
        seen: set[tuple[str, str]] = set()
        models = node.properties.get("models")
        for m in models if isinstance(models, list) else []:
            if not isinstance(m, dict) or not isinstance(m.get("name"), str) or not m.get("name"):
                continue
            directory = str(m.get("directory") or "")
            key = canonical_folder(directory) if directory else ""
            filename = _clean_name(m["name"])
            sha = m.get("hash") if isinstance(m.get("hash"), str) else None
            if sha and (
                not re.fullmatch(r"[0-9a-fA-F]{64}", sha)
                or m.get("hash_type", "sha256") != "sha256"
            ):
                sha = None
            url = m.get("url") if isinstance(m.get("url"), str) and m.get("url") else None
            seen.add((key, filename))
            out.append(
                ModelNeed(
                    name, node, key, filename, url, sha.lower() if sha else None, directory or None
                )
            )
        for input_name, index, key in LOADER_INPUTS.get(node.class_type, []):
            value: Any = None
            if workflow.format == "api":
                value = node.inputs.get(input_name)
            elif isinstance(node.widgets, list) and index < len(node.widgets):
                value = node.widgets[index]
            elif isinstance(node.widgets, dict):
                value = node.widgets.get(input_name)
            if not isinstance(value, str) or not value.strip():
                continue  # a link from another node, or empty
            filename = _clean_name(value)
            if (key, filename) in seen:
                continue
            url = next(
                (n.url for n in out if n.node is node and n.filename == filename and n.url), None
            )
            seen.add((key, filename))
            out.append(ModelNeed(name, node, key, filename, url))
    return out


# --- cross-check ---------------------------------------------------------------------------


def manifest_provides(manifest: Manifest) -> set[tuple[str, str]]:
    """(key, filename) of every manifest model whose filename is known before download."""
    provided = set()
    for entry in manifest.models:
        filename = entry.filename or _url_filename(entry.url)
        if filename:
            provided.add((entry.key, entry.listed_as(filename)))
    return provided


def _url_filename(url: str) -> str:
    return unquote(PurePosixPath(urlsplit(url).path).name)


def missing_models(
    manifest: Manifest, workflow: Workflow, *, root: Path | None = None
) -> list[ModelNeed]:
    """Models the workflow needs that the manifest does not provide (nor ``root`` already has)."""
    provided = manifest_provides(manifest)
    urls = {(e.key, e.url) for e in manifest.models}
    missing = []
    for need in model_needs(workflow):
        if (need.key, need.filename) in provided or (need.url and (need.key, need.url) in urls):
            continue
        if root is not None and need.key and _on_disk(manifest, root, need):
            continue
        missing.append(need)
    return missing


def _on_disk(manifest: Manifest, root: Path, need: ModelNeed) -> bool:
    models = manifest.comfyui_dir(root) / "models"
    names = {need.key} | {a for a, t in FOLDER_ALIASES.items() if t == need.key}
    if need.directory and canonical_folder(need.directory) == need.key:
        names.add(need.directory)
    # need.filename may carry a subfolder ("SDXL/x.safetensors"), as ComfyUI lists it
    return any((models / n / need.filename).is_file() for n in names)


def suggested_entry(need: ModelNeed) -> str:
    """The ``[[models]]`` TOML to add for a need that carries a URL."""
    folder = need.directory or need.key
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", folder) or ".." in folder:
        folder = need.key  # a workflow's directory is only echoed when it is a plain name
    lines = ["[[models]]", f"url = {json.dumps(need.url)}", f"folder = {json.dumps(folder)}"]
    subfolder, _, name = need.filename.rpartition("/")
    if subfolder:  # "SDXL/x.safetensors": ComfyUI lists a file in a subfolder so
        lines.append(f"subfolder = {json.dumps(subfolder)}")
    lines.append(f"filename = {json.dumps(name)}")
    if need.sha256:
        lines.append(f'sha256 = "{need.sha256}"')
    return "\n".join(lines)


def describe_missing(need: ModelNeed) -> str:
    """One error paragraph for a missing model (with the entry to add when the URL is known)."""
    text = f"{need.describe()}, which the manifest does not provide"
    if need.url:
        text += "; add to the manifest:\n" + suggested_entry(need)
    else:
        text += " (add a [[models]] entry with its URL, folder and filename)"
    return text


# --- set + install -------------------------------------------------------------------------


def apply_settings(workflow: Workflow, settings: dict[str, Any]) -> int:
    """Apply ``{"Class.input": value}`` to every node of that class; return nodes changed."""
    changed = 0
    for key, value in settings.items():
        class_name, input_name = key.split(".", 1)
        targets = [n for n in workflow.nodes if n.class_type == class_name]
        if not targets:
            raise WorkflowError(
                f"workflow {workflow.path.name}: set {key!r}: no node of class {class_name}",
                hint="check the class name (case matters) against the workflow",
            )
        for node in targets:
            _set_input(workflow, node, class_name, input_name, value, key)
            changed += 1
    return changed


def _set_input(
    workflow: Workflow, node: WorkflowNode, cls: str, name: str, value: Any, key: str
) -> None:
    known = OUTPUT_WIDGETS.get(cls)
    if workflow.format == "api":
        if name not in node.inputs and (known is None or name not in known):
            raise WorkflowError(
                f"workflow {workflow.path.name}: set {key!r}: {node.label} has no input {name!r} "
                f"(inputs: {', '.join(sorted(node.inputs)) or 'none'})"
            )
        node.raw.setdefault("inputs", {})[name] = value
        node.inputs = node.raw["inputs"]
        return
    if known is None:
        raise WorkflowError(
            f"workflow {workflow.path.name}: set {key!r}: the widget order of {cls} is not "
            f"known, so a UI-format workflow cannot be edited by input name (supported: "
            f"{', '.join(OUTPUT_WIDGETS)})",
            hint="use an API-format workflow (Export (API)) for other classes",
        )
    if name not in known:
        raise WorkflowError(
            f"workflow {workflow.path.name}: set {key!r}: {cls} has no widget {name!r} "
            f"(widgets: {', '.join(known)})"
        )
    widgets = node.raw.get("widgets_values")
    if isinstance(widgets, dict):
        widgets[name] = value
        return
    index = known.index(name)
    if not isinstance(widgets, list) or index >= len(widgets):
        raise WorkflowError(
            f"workflow {workflow.path.name}: set {key!r}: {node.label} has no widget value at "
            f"position {index}",
            hint="re-save the workflow in ComfyUI so its widget values are complete",
        )
    widgets[index] = value


def installed_dir(manifest: Manifest, root: Path) -> Path:
    """``ROOT/<comfyui.path>/user/default/workflows``."""
    return manifest.comfyui_dir(root) / "user" / "default" / "workflows"


def check_workflows(manifest: Manifest, *, root: Path | None = None) -> list[str]:
    """Problems of every ``[[workflows]]`` entry (missing models, unreadable files, bad ``set``)."""
    problems = []
    for entry in manifest.workflows:
        try:
            workflow = load_workflow(manifest.workflow_source(entry))
            problems += [describe_missing(n) for n in missing_models(manifest, workflow, root=root)]
            apply_settings(workflow, entry.set)
        except WorkflowError as exc:
            problems.append(str(exc))
    return problems


def install_workflows(manifest: Manifest, root: Path) -> list[Path]:
    """Copy each workflow (with ``set`` applied) into ComfyUI's user workflows; return the paths.

    A file whose content would not change is not rewritten.
    """
    dest_dir = installed_dir(manifest, root)
    installed = []
    for entry in manifest.workflows:
        source = manifest.workflow_source(entry)
        dest = dest_dir / source.name
        dest_dir.mkdir(parents=True, exist_ok=True)
        if entry.set:
            workflow = load_workflow(source)
            apply_settings(workflow, entry.set)
            payload = (json.dumps(workflow.data, indent=2, ensure_ascii=False) + "\n").encode()
        else:
            payload = source.read_bytes()
        if not dest.is_file() or dest.read_bytes() != payload:
            write_atomic(dest, payload, fsync=False)
        installed.append(dest)
    return installed
