"""The provisioning manifest (schema version 1): models, custom nodes, workflows, checks.

Loaded from TOML or YAML with :func:`load_manifest`. Every problem is a
:class:`~comfyfleet.errors.ManifestError` naming the file and the field path
(``models[3].folder: unknown ComfyUI folder 'checkpoint' — did you mean 'checkpoints'?``).
"""

from __future__ import annotations

import difflib
import re
import tomllib
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from comfyfleet.errors import ManifestError
from comfyfleet.names import plain_subpath
from comfyfleet.units import parse_duration, parse_size

#: ComfyUI's core model folder keys (folder_paths.py; reference/provisioning_anchors.md §3.1)
CORE_FOLDERS: frozenset[str] = frozenset(
    {
        "checkpoints", "configs", "loras", "vae", "text_encoders", "diffusion_models",
        "clip_vision", "style_models", "embeddings", "diffusers", "vae_approx", "controlnet",
        "gligen", "upscale_models", "latent_upscale_models", "hypernetworks", "photomaker",
        "classifiers", "model_patches", "audio_encoders", "background_removal",
        "frame_interpolation", "geometry_estimation", "optical_flow", "detection",
    }
)  # fmt: skip
#: legacy directory names ComfyUI still searches, and the key it lists them under
FOLDER_ALIASES: dict[str, str] = {
    "unet": "diffusion_models",
    "clip": "text_encoders",
    "t2i_adapter": "controlnet",
}
#: file extensions ComfyUI lists in model folders (anything else is invisible to it)
MODEL_EXTENSIONS: frozenset[str] = frozenset(
    {".safetensors", ".ckpt", ".pt", ".pt2", ".bin", ".pth", ".pkl", ".sft"}
)
DEFAULT_COMFYUI_REPO = "https://github.com/comfyanonymous/ComfyUI.git"

_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
#: a Comfy Registry node id (``comfyui-impact-pack``, ``ComfyUI-GGUF``)
REGISTRY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")

Size = Annotated[int, BeforeValidator(parse_size), Field(ge=0)]
Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]


def canonical_folder(folder: str) -> str:
    """The key ComfyUI lists ``folder`` under (``unet`` → ``diffusion_models``)."""
    return FOLDER_ALIASES.get(folder, folder)


def check_filename(name: str) -> str:
    """Return ``name`` if it is a plain file name; raise ValueError on separators or ``..``."""
    if not name or name in {".", ".."} or "/" in name or "\\" in name or ".." in name:
        raise ValueError(
            f"filename {name!r} must be a plain file name without '/', '\\' or '..' "
            "(models always land directly in their folder)"
        )
    if "\x00" in name:
        raise ValueError("filename contains a NUL byte")
    return name


def suggest(word: str, choices: list[str] | frozenset[str]) -> str:
    """``" — did you mean 'x'?"`` for the closest choice, or ``""``."""
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f" — did you mean {close[0]!r}?" if close else ""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, str_strip_whitespace=True)


class ComfyUISettings(_Strict):
    """Where ComfyUI comes from, where it lives and how it is started."""

    repo: str = DEFAULT_COMFYUI_REPO
    ref: str = ""
    path: str = "ComfyUI"
    python: str = ""
    install_requirements: bool = True
    args: list[str] = Field(default_factory=lambda: ["--listen", "127.0.0.1", "--port", "8188"])
    extra_folders: list[str] = Field(default_factory=list)

    @field_validator("path")
    @classmethod
    def _relative_path(cls, v: str) -> str:
        p = PurePosixPath(v)
        if not v or p.is_absolute() or ".." in p.parts:
            raise ValueError("must be a relative path inside --root, e.g. 'ComfyUI'")
        return v

    @property
    def port(self) -> int:
        """The port ComfyUI listens on, from ``--port`` in ``args`` (ComfyUI's default 8188)."""
        for i, arg in enumerate(self.args):
            if arg == "--port" and i + 1 < len(self.args):
                return int(self.args[i + 1])
            if arg.startswith("--port="):
                return int(arg.split("=", 1)[1])
        return 8188

    @property
    def listen(self) -> str:
        """The address to reach ComfyUI at (its ``--listen``; 0.0.0.0 is reached on loopback)."""
        for i, arg in enumerate(self.args):
            if arg == "--listen" and i + 1 < len(self.args):
                host = self.args[i + 1]
                return "127.0.0.1" if host in {"0.0.0.0", "::", ""} else host
        return "127.0.0.1"


class DownloadSettings(_Strict):
    """How the download engine behaves."""

    concurrency: int = Field(8, ge=1, le=256)
    connections_per_file: int = Field(8, ge=1, le=64)
    per_host: dict[str, int] = Field(default_factory=lambda: {"civitai.com": 2})
    stall_timeout: Duration = 60.0
    min_speed: Size = 256 * 1024
    file_timeout: Duration = 7200.0
    retries: int = Field(8, ge=0, le=100)
    segment_size: Size = 32 * 1024 * 1024
    #: a TCP (and TLS) connection must be up within this, and the reply's first byte must
    #: follow within first_byte_timeout: a server that accepts and never answers fails fast
    connect_timeout: Duration = Field(10.0, gt=0)
    first_byte_timeout: Duration = Field(30.0, gt=0)

    @field_validator("per_host")
    @classmethod
    def _positive_caps(cls, v: dict[str, int]) -> dict[str, int]:
        for host, cap in v.items():
            if cap < 1:
                raise ValueError(f"per_host[{host!r}] must be at least 1")
        return v


class ModelEntry(_Strict):
    """One model file: where it comes from and where it lands."""

    url: str
    folder: str
    filename: str | None = None
    sha256: str | None = None
    size: Size | None = None
    required: bool = True
    mirrors: list[str] = Field(default_factory=list)
    #: plain segments joined by "/": lands in models/<folder>/<subfolder>/<filename>
    subfolder: str = ""

    @field_validator("url", "mirrors")
    @classmethod
    def _http_url(cls, v: Any) -> Any:
        for url in [v] if isinstance(v, str) else v:
            if not re.match(r"^https?://[^/\s]+", url):
                raise ValueError(f"{url!r} is not an http(s) URL")
        return v

    @field_validator("filename")
    @classmethod
    def _plain_filename(cls, v: str | None) -> str | None:
        return None if v is None else check_filename(v)

    @field_validator("subfolder")
    @classmethod
    def _plain_subfolder(cls, v: str) -> str:
        plain_subpath(v)  # raises UnsafeName (a ValueError) naming the bad segment
        return v

    @field_validator("sha256")
    @classmethod
    def _hex_sha256(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        if not _SHA256.match(v):
            raise ValueError("must be 64 hex characters (the file's SHA-256)")
        return v.lower()

    @property
    def key(self) -> str:
        """The canonical ComfyUI folder key this file is listed under."""
        return canonical_folder(self.folder)

    def listed_as(self, filename: str) -> str:
        """The name ComfyUI lists the file under in its folder: ``<subfolder>/<filename>``."""
        return f"{self.subfolder}/{filename}" if self.subfolder else filename


class NodeEntry(_Strict):
    """A custom node repository to install into ``custom_nodes/``."""

    repo: str | None = None
    #: a Comfy Registry id, resolved to ``repo`` by check and provision (when ``repo`` is absent)
    registry_id: str | None = None
    ref: str | None = None
    critical: bool = False
    classes: list[str] = Field(default_factory=list)

    @field_validator("registry_id")
    @classmethod
    def _registry_id(cls, v: str | None) -> str | None:
        if v is not None and not REGISTRY_ID.match(v):
            raise ValueError(
                f"{v!r} is not a Comfy Registry id (letters, digits, '-', '_', '.'; "
                "e.g. 'comfyui-impact-pack')"
            )
        return v

    @model_validator(mode="after")
    def _repo_or_registry_id(self) -> NodeEntry:
        if not self.repo and not self.registry_id:
            raise ValueError('needs repo = "<git URL>" or registry_id = "<Comfy Registry id>"')
        return self

    @property
    def name(self) -> str:
        """The directory name under ``custom_nodes/`` (the repo's last path segment, else the
        registry id)."""
        if not self.repo:
            return self.registry_id or "node"
        tail = self.repo.rstrip("/").rsplit("/", 1)[-1]
        return tail.removesuffix(".git") or "node"


class ValidateSettings(_Strict):
    """Post-install checks."""

    strict: bool = False
    min_size: Size = 100 * 1024 * 1024
    require: dict[str, int] = Field(default_factory=dict)
    warn: dict[str, int] = Field(default_factory=dict)


class WorkflowEntry(_Strict):
    """A workflow JSON to install into ComfyUI's user workflows, with output settings."""

    path: str
    set: dict[str, str | int | float | bool] = Field(default_factory=dict)

    @field_validator("set")
    @classmethod
    def _class_dot_input(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key in v:
            if not re.fullmatch(r"[^.\s]+\.[^.\s]+", key):
                raise ValueError(
                    f"key {key!r} must be '<NodeClass>.<input>', e.g. 'SaveImage.filename_prefix'"
                )
        return v


class Manifest(_Strict):
    """A whole provisioning manifest (schema version 1)."""

    version: Literal[1] = 1
    comfyui: ComfyUISettings = Field(default_factory=ComfyUISettings)
    download: DownloadSettings = Field(default_factory=DownloadSettings)
    models: list[ModelEntry] = Field(default_factory=list)
    nodes: list[NodeEntry] = Field(default_factory=list)
    validate_: ValidateSettings = Field(default_factory=ValidateSettings, alias="validate")
    workflows: list[WorkflowEntry] = Field(default_factory=list)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    #: directory the manifest was loaded from (workflow paths are relative to it)
    base_dir: Path = Field(default=Path("."), exclude=True)

    @model_validator(mode="after")
    def _known_folders(self) -> Manifest:
        known = self.known_folders()
        for i, entry in enumerate(self.models):
            if entry.folder not in known:
                raise _FieldError(
                    ("models", i, "folder"),
                    f"unknown ComfyUI folder {entry.folder!r}{suggest(entry.folder, known)} "
                    "(a node-registered folder must be listed in comfyui.extra_folders)",
                )
        for section in ("require", "warn"):
            for folder in getattr(self.validate_, section):
                if folder not in known:
                    raise _FieldError(
                        ("validate", section, folder),
                        f"unknown ComfyUI folder {folder!r}{suggest(folder, known)}",
                    )
        return self

    @model_validator(mode="after")
    def _one_entry_per_destination(self) -> Manifest:
        from comfyfleet.download.plan import static_collisions  # the plan owns destinations

        hits = static_collisions(self.models)
        if hits:
            raise _FieldError(("models", hits[0].later, hits[0].field), hits[0].message())
        return self

    def known_folders(self) -> frozenset[str]:
        """Folder keys a model entry may use: core keys, legacy aliases and extra_folders."""
        return CORE_FOLDERS | FOLDER_ALIASES.keys() | frozenset(self.comfyui.extra_folders)

    def comfyui_dir(self, root: Path) -> Path:
        """ComfyUI's directory under ``root``."""
        return root / self.comfyui.path

    def model_dir(self, root: Path, entry: ModelEntry) -> Path:
        """The directory ``entry`` lands in: ``ROOT/<comfyui.path>/models/<folder>/<subfolder>``."""
        return self.comfyui_dir(root).joinpath(
            "models", entry.folder, *plain_subpath(entry.subfolder)
        )

    def model_path(self, root: Path, entry: ModelEntry, filename: str) -> Path:
        """Where ``entry`` lands when named ``filename`` (the download plan's destination)."""
        from comfyfleet.download.plan import destination

        return destination(self.comfyui_dir(root) / "models", entry, filename)

    def workflow_source(self, entry: WorkflowEntry) -> Path:
        """The workflow file on disk, relative to the manifest's directory."""
        return (self.base_dir / entry.path).resolve()


class _FieldError(ValueError):
    """Raised from model validators to report a precise field path."""

    def __init__(self, loc: tuple[Any, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message


def format_loc(loc: tuple[Any, ...]) -> str:
    """``models[3].folder`` from pydantic's ``('models', 3, 'folder')``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][\w\-]*", str(part)):
            out += ("." if out else "") + str(part)
        else:  # a key that is not a plain name (empty, spaces, dots): show it quoted
            out += f"[{str(part)!r}]"
    return out or "(top level)"


_FIXES = {
    "extra_forbidden": "unknown key (check the spelling; see the manifest reference in README)",
    "missing": "required key is missing",
}


def _describe(err: dict[str, Any]) -> str:
    loc = tuple(p for p in err["loc"] if p not in {"function-after"})
    if err["type"] in _FIXES:
        text = _FIXES[err["type"]]
        if err["type"] == "extra_forbidden" and loc:
            parent_fields = _fields_at(loc[:-1])
            text += suggest(str(loc[-1]), parent_fields) if parent_fields else ""
    else:
        text = err["msg"].removeprefix("Value error, ")
        if err["type"] == "literal_error" and loc == ("version",):
            text = "unsupported manifest version: this comfyfleet reads version = 1"
    return f"{format_loc(loc)}: {text}"


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = Manifest
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) or next(
            (f for f in model.model_fields.values() if f.alias == part), None
        )
        if field is None:
            return []
        ann = field.annotation
        inner = getattr(ann, "__args__", (ann,))
        sub = next((a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if sub is None:
            return []
        model = sub
    return [f.alias or name for name, f in model.model_fields.items() if name != "base_dir"]


def parse_manifest(
    data: Any, *, source: str = "manifest", base_dir: Path | None = None
) -> Manifest:
    """Validate already-parsed manifest data; raise ManifestError with field paths."""
    if not isinstance(data, dict):
        raise ManifestError(f"{source}: the manifest must be a table/mapping at the top level")
    if "base_dir" in data:
        raise ManifestError(f"{source}: base_dir: unknown key")
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            ctx_err = (err.get("ctx") or {}).get("error")
            if isinstance(ctx_err, _FieldError):
                lines.append(f"{format_loc(ctx_err.loc)}: {ctx_err.message}")
            else:
                lines.append(_describe(err))
        raise ManifestError(
            f"{source}: " + (lines[0] if len(lines) == 1 else "\n  " + "\n  ".join(lines)),
            hint="fix the manifest and run the command again; nothing was changed",
        ) from None
    manifest.base_dir = base_dir or Path(".")
    return manifest


def load_manifest(path: str | Path) -> Manifest:
    """Load and validate a TOML (``.toml``) or YAML (``.yaml``/``.yml``) manifest file."""
    path = Path(path)
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(f"{name}: no such file", hint="pass the path of a manifest") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{name}: cannot read: {exc}") from None
    try:
        if path.suffix.lower() in {".yaml", ".yml"}:
            data = yaml.safe_load(text) or {}
        else:
            data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"{name}: invalid TOML: {exc}", hint="fix the syntax") from None
    except yaml.YAMLError as exc:
        raise ManifestError(f"{name}: invalid YAML: {exc}", hint="fix the syntax") from None
    return parse_manifest(data, source=name, base_dir=path.resolve().parent)
