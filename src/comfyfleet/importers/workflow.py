"""A ComfyUI workflow (UI or API format) → the models and custom nodes it needs.

- ``properties.models[]`` (``name``, ``url``, ``directory``, ``hash``) become ``[[models]]``.
  ``directory`` must be a plain folder name and ``name`` plain segments (``SDXL\\x`` →
  ``subfolder = "SDXL"``): a shared workflow naming ``../../.ssh`` is refused and said so.
- Every other widget value with a model extension, on any class, is a file the workflow needs
  without a URL: a commented ``[[models]]`` block ready to fill in, its folder from the class
  (:data:`~comfyfleet.install.workflows.LOADER_INPUTS`, the pack table) or the widget's name.
- Models of bypassed or muted nodes (mode 4 or 2) are imported as ``required = false``:
  users toggle such nodes on (the official templates bypass their Lightning LoRAs).
- Custom nodes: ``properties.aux_id`` (``owner/repo`` on GitHub), ``cnr_id`` (Comfy Registry)
  and ``ver`` (a commit becomes ``ref``; a registry version is noted), else the built-in pack
  table by node class; ``classes`` lists the classes the workflow uses.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comfyfleet.importers.folders import NotAModelPath, split_relative
from comfyfleet.importers.packs import NodePack, pack_table
from comfyfleet.importers.result import (
    ImportedModel,
    ImportedNode,
    ImportResult,
    node_folder_problem,
)
from comfyfleet.importers.urls import clean_url
from comfyfleet.install.workflows import LOADER_INPUTS, WorkflowNode, load_workflow
from comfyfleet.manifest import MODEL_EXTENSIONS, REGISTRY_ID
from comfyfleet.names import UnsafeName, escape_controls, plain_name

#: extensions of files a widget may name: ComfyUI's own plus those custom loaders read
FILE_EXTENSIONS = MODEL_EXTENSIONS | {".gguf", ".onnx"}
#: widget name (prefix) → folder, for classes nobody has told us about
WIDGET_FOLDERS: tuple[tuple[str, str], ...] = (
    ("clip_vision", "clip_vision"),
    ("ckpt_name", "checkpoints"),
    ("lora", "loras"),
    ("vae", "vae"),
    ("unet_name", "diffusion_models"),
    ("clip_name", "text_encoders"),
    ("text_encoder", "text_encoders"),
    ("control_net", "controlnet"),
    ("controlnet", "controlnet"),
    ("upscale_model", "upscale_models"),
    ("style_model", "style_models"),
    ("gligen", "gligen"),
    ("hypernetwork", "hypernetworks"),
    ("ipadapter", "ipadapter"),
)
_INACTIVE = {2: "muted", 4: "bypassed"}
_COMMIT = re.compile(r"^[0-9a-f]{7,40}$")
_AUX_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+$")
_CORE = "comfy-core"
#: nodes whose widgets hold free text, not file choices
_TEXT_NODES = frozenset({"Note", "MarkdownNote", "PrimitiveStringMultiline"})


def _has_file_extension(value: str) -> bool:
    dot = value.rfind(".")
    return dot > 0 and value[dot:].lower() in FILE_EXTENSIONS


def _split_name(name: str) -> tuple[str, str]:
    """``SDXL\\x.safetensors`` → ``("SDXL", "x.safetensors")`` (as ComfyUI lists it)."""
    parts = [p for p in name.replace("\\", "/").split("/") if p]
    return "/".join(parts[:-1]), parts[-1] if parts else ""


@dataclass
class _PackUse:
    node: ImportedNode
    versions: list[str]


class _WorkflowReader:
    def __init__(self, path: Path, workflow_path: str) -> None:
        self.path = path
        self.workflow = load_workflow(path)
        self.result = ImportResult(str(path), workflows=[workflow_path])
        self.table = pack_table()
        self.packs: dict[str, _PackUse] = {}
        self.aux_of: dict[str, str] = {}
        #: (subfolder, filename) of every file already listed, with a URL or without
        self.named: set[tuple[str, str]] = set()

    def read(self) -> ImportResult:
        for node in self.workflow.nodes:
            self.listed_models(node)
        for node in self.workflow.nodes:
            self.named_files(node)
        live = {(m.subfolder, m.filename) for m in self.result.models if not m.commented}
        self.result.models = [  # a file some node lists with a URL needs no block to fill in
            m for m in self.result.models
            if not m.commented or (m.subfolder, m.filename) not in live
        ]  # fmt: skip
        # a pack some node names by aux_id is that repository for its other nodes as well
        self.aux_of = {
            n.properties["cnr_id"]: n.properties["aux_id"]
            for n in self.workflow.nodes
            if isinstance(n.properties.get("cnr_id"), str)
            and isinstance(n.properties.get("aux_id"), str)
        }
        for node in self.workflow.nodes:
            self.custom_node(node)
        for use in self.packs.values():
            self.result.nodes.append(use.node)
        return self.result

    # --- models ------------------------------------------------------------------------

    def inactive_note(self, node: WorkflowNode) -> str | None:
        state = _INACTIVE.get(node.mode)
        if state is None:
            return None
        return (
            f"{node.label} is {state} in the workflow: optional (required = false), so a "
            "failed download only warns; switch the node on and the file is there"
        )

    def listed_models(self, node: WorkflowNode) -> None:
        models = node.properties.get("models")
        for m in models if isinstance(models, list) else []:
            if not isinstance(m, dict) or not isinstance(m.get("name"), str):
                continue
            shown = f"{node.label}: properties.models {m.get('name')!r}"
            url = m.get("url") if isinstance(m.get("url"), str) else ""
            directory = m.get("directory") if isinstance(m.get("directory"), str) else ""
            if not url:  # listed without a URL: a block to fill in, in its directory
                plain = re.fullmatch(r"[A-Za-z0-9_.-]+", directory) and ".." not in directory
                self.needs_url(node, m["name"], directory if plain else "", self.named)
                continue
            sub, name = _split_name(m["name"])
            try:
                if not directory:
                    raise NotAModelPath("no directory (folder) given")
                try:
                    plain_name(directory, what="directory")
                except UnsafeName as exc:
                    raise NotAModelPath(
                        f"refused: {exc} (a folder key is one plain name)"
                    ) from None
                loc = split_relative(f"{directory}/{sub}/{name}", is_file=True)
            except NotAModelPath as exc:
                self.result.skip(0, shown, f"{exc}; a shared workflow may not choose where "
                                 "files land outside ComfyUI's model folders")  # fmt: skip
                continue
            clean, notes = clean_url(url)
            if clean is None:
                self.result.skip(0, shown, "; ".join(notes))
                continue
            sha = m.get("hash") if isinstance(m.get("hash"), str) else None
            if sha and (not re.fullmatch(r"[0-9a-fA-F]{64}", sha)
                        or m.get("hash_type", "sha256") != "sha256"):  # fmt: skip
                sha = None
            note = self.inactive_note(node)
            if loc.node_folder:
                notes.append(f"{loc.folder!r} is registered by a custom node (listed in "
                             "comfyui.extra_folders)")  # fmt: skip
            self.add_model(
                ImportedModel(
                    clean,
                    loc.folder,
                    loc.filename,
                    loc.subfolder,
                    sha.lower() if sha else None,
                    required=note is None,
                    notes=[*notes, *([note] if note else [])],
                )
            )

    def add_model(self, model: ImportedModel) -> None:
        """Add, merging the same file listed by several nodes (required if any node is on)."""
        self.named.add((model.subfolder, model.filename or ""))
        for other in self.result.models:
            if (other.url, other.folder, other.subfolder, other.filename) == (
                model.url, model.folder, model.subfolder, model.filename
            ) and other.commented == model.commented:  # fmt: skip
                if model.required and not other.required:
                    other.required = True
                    other.notes = [n for n in other.notes if "required = false" not in n]
                return
        self.result.models.append(model)

    def widget_values(self, node: WorkflowNode) -> list[tuple[str | None, int, Any]]:
        """(widget name when known, position, value) of every widget/input value."""
        if self.workflow.format == "api":
            return [(k, i, v) for i, (k, v) in enumerate(node.inputs.items())]
        if isinstance(node.widgets, dict):
            return [(k, i, v) for i, (k, v) in enumerate(node.widgets.items())]
        values = list(node.widgets or [])
        inputs = node.raw.get("inputs")
        names = [
            inp["widget"].get("name")
            for inp in (inputs if isinstance(inputs, list) else [])
            if isinstance(inp, dict) and isinstance(inp.get("widget"), dict)
        ]
        if len(names) != len(values):
            names = [None] * len(values)
        out: list[tuple[str | None, int, Any]] = []
        for i, v in enumerate(values):
            if isinstance(v, dict):  # e.g. rgthree's Power Lora Loader: {"lora": "x", "on": true}
                out += [(k, i, inner) for k, inner in v.items()]
            else:
                out.append((names[i], i, v))
        return out

    def folder_for(self, node: WorkflowNode, name: str | None, index: int) -> str:
        for input_name, position, key in LOADER_INPUTS.get(node.class_type, []):
            if name == input_name or (name is None and position == index):
                return key
        known = self.table.loader_folder(node.class_type)
        if known:
            return known
        lowered = (name or "").lower()
        return next((folder for prefix, folder in WIDGET_FOLDERS if prefix in lowered), "")

    def named_files(self, node: WorkflowNode) -> None:
        if node.class_type in _TEXT_NODES:
            return
        for name, index, value in self.widget_values(node):
            if not isinstance(value, str) or "\n" in value or len(value) > 512:
                continue
            if _has_file_extension(value.strip()):
                self.needs_url(node, value, self.folder_for(node, name, index), self.named)

    def needs_url(
        self, node: WorkflowNode, value: str, folder: str, named: set[tuple[str, str]]
    ) -> None:
        """A commented ``[[models]]`` block for a file the workflow names without a URL."""
        sub, filename = _split_name(value.strip())
        if (sub, filename) in named:
            return
        why = f"needs a URL ({node.class_type}, node {node.id}"
        why += f", {_INACTIVE[node.mode]})" if node.mode in _INACTIVE else ")"
        try:
            plain_name(filename, what="filename")
            for seg in sub.split("/") if sub else []:
                plain_name(seg, what="subfolder segment")
            if folder:
                plain_name(folder, what="folder")
        except UnsafeName as exc:
            self.result.skip(0, f"{node.label}: {value}", f"refused: {exc}")
            return
        notes = [] if folder else ["folder unknown: write the ComfyUI folder this loader reads"]
        note = self.inactive_note(node)
        model = ImportedModel(
            "", folder, filename, sub, required=note is None, notes=notes, commented=why
        )
        self.add_model(model)
        named.add((sub, filename))

    # --- custom nodes --------------------------------------------------------------------

    def custom_node(self, node: WorkflowNode) -> None:
        props = node.properties
        cnr_id = props.get("cnr_id") if isinstance(props.get("cnr_id"), str) else None
        aux_id = props.get("aux_id") if isinstance(props.get("aux_id"), str) else None
        if aux_id is None and cnr_id is not None:
            aux_id = self.aux_of.get(cnr_id)
        ver = props.get("ver") if isinstance(props.get("ver"), str) else None
        if cnr_id == _CORE:
            return
        pack: NodePack | None = None
        if cnr_id is None and aux_id is None:
            pack = self.table.by_class(node.class_type)
            if pack is None:
                return  # a core node, or a pack nobody named: nothing to install
        elif cnr_id is not None:
            pack = self.table.by_registry_id(cnr_id)
        shown = f"{node.label}: cnr_id={cnr_id!r} aux_id={aux_id!r}"
        if aux_id is not None and (not _AUX_ID.match(aux_id) or node_folder_problem(aux_id)):
            self.result.skip(0, shown, "aux_id is not owner/repo; not imported")
            return
        if cnr_id is not None and not REGISTRY_ID.match(cnr_id):
            self.result.skip(0, shown, "cnr_id is not a Comfy Registry id; not imported")
            return
        new = self.new_node(cnr_id, aux_id, pack)
        key = (new.repo or f"registry:{new.registry_id}").lower().removesuffix(".git")
        use = self.packs.get(key)
        if use is None:
            use = self.packs[key] = _PackUse(new, [])
        printable = re.fullmatch(r"[^\x00-\x1f\x7f-\x9f]{1,200}", node.class_type or "")
        if printable and node.class_type not in use.node.classes:
            use.node.classes.append(node.class_type)
        if ver and ver not in use.versions:
            use.versions.append(ver)
            self.pin(use, ver)

    def new_node(
        self, cnr_id: str | None, aux_id: str | None, pack: NodePack | None
    ) -> ImportedNode:
        if aux_id:
            return ImportedNode(repo=f"https://github.com/{aux_id}")
        if pack is not None:
            how = f"registry id {cnr_id!r}" if cnr_id else "its node classes"
            return ImportedNode(
                repo=pack.repo,
                notes=[
                    f"repository found by {how} in comfyfleet's node-pack table ({pack.source})"
                ],
            )
        return ImportedNode(
            registry_id=cnr_id,
            notes=["check and provision resolve this Comfy Registry id to its repository"],
        )

    def pin(self, use: _PackUse, ver: str) -> None:
        node = use.node
        safe = escape_controls(ver)[:80]
        if _COMMIT.match(ver) and node.ref is None:
            node.ref = ver
            return
        if _COMMIT.match(ver) and node.ref != ver:
            node.notes.append(f"the workflow also names commit {safe}; ref keeps {node.ref}")
            return
        node.notes.append(
            f"the workflow was saved with version {safe} of this pack (a registry version, not "
            'a git ref): pin a commit with ref = "…" (check warns while it is unpinned)'
        )


def import_workflow(path: Path, *, manifest_path: Path | None = None) -> ImportResult:
    """Read a workflow; the ``[[workflows]] path`` is relative to ``manifest_path``'s directory
    when given (``-o``), else absolute."""
    path = Path(path)
    absolute = path.resolve()
    if manifest_path is None:
        where = str(absolute)
    else:
        where = os.path.relpath(absolute, Path(manifest_path).resolve().parent)
    return _WorkflowReader(path, where).read()
