"""Where a path written in a script or a workflow puts a model: folder key, subfolder, name.

``…/models/<folder>/<sub>/<name>`` → ``(folder, "sub", name)``. The legacy storage directories
of ai-dock images are mapped first (``ckpt`` → ``checkpoints``, ``lora`` → ``loras``,
``esrgan`` → ``upscale_models``; ai-dock ``storage_monitor/etc/mappings.sh``,
reference/provisioning_anchors.md §1.1). Every segment must pass the plain-name rule: a
hostile ``directory`` such as ``../../.ssh`` is refused here, with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from comfyfleet.manifest import CORE_FOLDERS, FOLDER_ALIASES, MODEL_EXTENSIONS, check_filename
from comfyfleet.names import UnsafeName, escape_controls, plain_name

#: ai-dock's storage directory names → the ComfyUI folder they are linked to
LEGACY_STORAGE: dict[str, str] = {
    "ckpt": "checkpoints",
    "lora": "loras",
    "esrgan": "upscale_models",
}
#: model directories inside a custom node's own folder, and the folder key that lists them
#: (AnimateDiff-Evolved registers its models/ and motion_lora/ under these keys:
#: animatediff/utils_model.py, reference/provisioning_anchors.md §3.1)
NODE_OWN_DIRS: dict[tuple[str, str], str] = {
    ("ComfyUI-AnimateDiff-Evolved", "models"): "animatediff_models",
    ("ComfyUI-AnimateDiff-Evolved", "motion_lora"): "animatediff_motion_lora",
}
#: marks an unresolved shell variable inside an expanded string (never in real text)
UNRESOLVED = "\x00"


class NotAModelPath(ValueError):
    """A path that does not name a place under ComfyUI's ``models/`` (the message says why)."""


@dataclass(frozen=True)
class Location:
    """Where a file lands under ``models/``."""

    folder: str
    subfolder: str = ""
    filename: str | None = None

    @property
    def node_folder(self) -> bool:
        """True when the folder is not ComfyUI's own (a custom node registers it)."""
        return self.folder not in CORE_FOLDERS and self.folder not in FOLDER_ALIASES


def has_model_extension(name: str) -> bool:
    """True when ``name`` ends with an extension ComfyUI lists in model folders."""
    dot = name.rfind(".")
    return dot > 0 and name[dot:].lower() in MODEL_EXTENSIONS


def folder_key(segment: str) -> str:
    """The manifest folder for a directory name (legacy storage names mapped); UnsafeName if
    the name is not plain."""
    plain_name(segment, what="folder")
    return LEGACY_STORAGE.get(segment, segment)


def split_relative(rel: str, *, is_file: bool) -> Location:
    """``loras/ACE/x.safetensors`` (relative to ``models/``) → Location; NotAModelPath if not."""
    parts = [p for p in rel.replace("\\", "/").split("/") if p not in ("", ".")]
    if UNRESOLVED in rel:
        raise NotAModelPath("holds a NUL or a shell variable the importer cannot resolve")
    if rel.startswith(("/", "\\")):
        raise NotAModelPath(f"refused: {escape_controls(rel)!r} is an absolute path")
    if not parts or (is_file and len(parts) < 2):
        raise NotAModelPath("names no folder under models/")
    try:
        folder = folder_key(parts[0])
        rest = parts[1:]
        filename = None
        if is_file:
            filename = check_filename(plain_name(rest[-1], what="filename"))
            rest = rest[:-1]
        for seg in rest:
            plain_name(seg, what="subfolder segment")
    except (UnsafeName, ValueError) as exc:
        raise NotAModelPath(f"refused: {exc}") from None
    return Location(folder, "/".join(rest), filename)


def locate(path: str, *, is_file: bool) -> Location:
    """The Location of an absolute or ``$VAR``-expanded path containing ``/models/``.

    Only the part after the last ``models`` segment matters (ai-dock's
    ``…/storage/stable_diffusion/models/ckpt`` as well), so an unknown root such as
    ``$MY_DIR/models/vae`` still maps.
    """
    parts = path.replace("\\", "/").split("/")
    if "custom_nodes" in parts:  # a node's own model directory, e.g. AnimateDiff's models/
        i = len(parts) - 1 - parts[::-1].index("custom_nodes")
        own = NODE_OWN_DIRS.get((parts[i + 1], parts[i + 2])) if len(parts) > i + 2 else None
        if own:
            rest = "/".join(parts[i + 3 :])
            return split_relative(f"{own}/{rest}" if rest else own, is_file=is_file)
    searchable = parts[:-1] if is_file else parts
    if "models" not in searchable:
        if "input" in searchable:
            raise NotAModelPath("an input file for ComfyUI (input/), not a model")
        raise NotAModelPath("not under a models/ directory")
    index = max(i for i, p in enumerate(searchable) if p == "models")
    return split_relative("/".join(parts[index + 1 :]), is_file=is_file)


def looks_like_file(path: str) -> bool:
    """True when the last segment of ``path`` has a model extension (a file, not a directory)."""
    return not path.endswith("/") and has_model_extension(path.rstrip("/").rsplit("/", 1)[-1])
