"""The provisioning manifest (schema version 1): models, custom nodes, workflows, checks.

Loaded from TOML or YAML with :func:`load_manifest`. Every problem is a
:class:`~comfyfleet.errors.ManifestError` naming the file and the field path
(``models[3].folder: unknown ComfyUI folder 'checkpoint' — did you mean 'checkpoints'?``).
"""

from __future__ import annotations

import difflib
import math
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
import yarl
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
from comfyfleet.names import UnsafeName, escape_controls, plain_filename, plain_name, plain_subpath
from comfyfleet.redact import redact_text, redact_url
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
_CONTROL_OR_SPACE = re.compile(
    r"[\x00-\x20\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)

Size = Annotated[int, BeforeValidator(parse_size), Field(ge=0)]
Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]


def canonical_folder(folder: str) -> str:
    """The key ComfyUI lists ``folder`` under (``unet`` → ``diffusion_models``)."""
    return FOLDER_ALIASES.get(folder, folder)


def check_filename(name: str) -> str:
    """Return ``name`` if it is a plain file name (:func:`~comfyfleet.names.plain_name`)."""
    try:
        return plain_filename(name)
    except UnsafeName as exc:
        raise UnsafeName(
            f"{exc} (models land directly in their folder; use subfolder for a directory)"
        ) from None


def _plain(value: str, what: str) -> str:
    """:func:`plain_name` with a fix in the message (pydantic adds the field path)."""
    try:
        return plain_name(value, what=what)
    except UnsafeName as exc:
        raise ValueError(f"{exc}: a {what} is one plain name, e.g. 'ipadapter'") from None


def _no_controls(value: str, what: str) -> str:
    """``value`` if it holds no control, bidi or line-separator character."""
    if value != escape_controls(value):
        raise ValueError(f"{what} {_shown_url(value)!r} contains a control character")
    return value


def _option_safe(value: str, what: str) -> str:
    """``value`` if git cannot read it as an option (``--upload-pack=…``) and it is printable."""
    _no_controls(value, what)
    if value.startswith("-"):
        raise ValueError(f"{what} {_shown_url(value)!r} must not start with '-'")
    return value


def _shown_url(url: str) -> str:
    """A value that may be a URL, fit for an error message: userinfo and any query or
    fragment (where credentials live) replaced by ``***``, control characters escaped."""
    head, sep, _ = url.partition("?")
    head, hsep, _ = head.partition("#")
    head = re.sub(r"(?<=//)[^/]*@", "***@", head)
    return escape_controls(redact_text(head + ("?***" if sep or hsep else "")))


def check_url(url: str) -> str:
    """``url`` if it is an absolute http(s) URL that parses (host, port); else ValueError.

    The message shows the URL redacted: a token in a query or userinfo never reaches output.
    """
    shown = _shown_url(url) if isinstance(url, str) else repr(url)
    if not isinstance(url, str) or _CONTROL_OR_SPACE.search(url):
        raise ValueError(
            f"{shown!r} is not a valid URL (white space or a control character: percent-encode it)"
        )
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 — raises ValueError on a bad port
        parsed = yarl.URL(url)  # what aiohttp will parse
    except ValueError as exc:
        raise ValueError(f"{shown!r} is not a valid URL ({exc})") from None
    if parts.scheme not in {"http", "https"} or not parts.hostname or not parsed.host:
        raise ValueError(f"{shown!r} is not an http(s) URL with a host")
    return url


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
        try:
            plain_subpath(v, what="path")
        except UnsafeName as exc:
            raise ValueError(
                f"must be a relative path of plain names inside --root, e.g. 'ComfyUI' ({exc})"
            ) from None
        if not v:
            raise ValueError("must be a relative path inside --root, e.g. 'ComfyUI'")
        return v

    @field_validator("repo", "ref")
    @classmethod
    def _git_safe(cls, v: str, info: Any) -> str:
        return _option_safe(v, info.field_name)

    @field_validator("python")
    @classmethod
    def _printable(cls, v: str) -> str:
        return _no_controls(v, "python")

    @field_validator("extra_folders")
    @classmethod
    def _plain_folders(cls, v: list[str]) -> list[str]:
        for i, folder in enumerate(v):
            try:
                plain_name(folder, what="folder")
            except UnsafeName as exc:
                raise _FieldError(
                    ("comfyui", "extra_folders", i),
                    f"{exc}: a folder key is one plain name, e.g. 'ipadapter'",
                ) from None
        return v

    @field_validator("args")
    @classmethod
    def _startable(cls, v: list[str]) -> list[str]:
        for i, arg in enumerate(v):
            _no_controls(arg, f"args[{i}]")
        for flag in ("--port", "--listen"):
            for i, arg in enumerate(v):
                if arg == flag and (i + 1 == len(v) or v[i + 1].startswith("--")):
                    raise ValueError(f"{flag} needs a value, e.g. [..., {flag!r}, 'VALUE']")
        port = _port_arg(v)
        if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
            raise ValueError(
                f"--port {port!r} is not a port number (1-65535), e.g. ['--port', '8188']"
            )
        return v

    @property
    def port(self) -> int:
        """The port ComfyUI listens on, from ``--port`` in ``args`` (ComfyUI's default 8188)."""
        port = _port_arg(self.args)
        return 8188 if port is None else int(port)

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
            if not host or _CONTROL_OR_SPACE.search(host) or "/" in host or "@" in host:
                raise ValueError(
                    f"per_host key {escape_controls(host)!r} must be a host name, "
                    "e.g. 'civitai.com'"
                )
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
            check_url(url)
        return v

    @field_validator("folder")
    @classmethod
    def _plain_folder(cls, v: str) -> str:
        return _plain(v, "folder")

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
    """A custom node repository to install into ``custom_nodes/<name>``."""

    repo: str | None = None
    #: a Comfy Registry id, resolved to ``repo`` by check and provision (when ``repo`` is absent)
    registry_id: str | None = None
    ref: str | None = None
    #: its folder under ``custom_nodes/``; default: the repo's last path segment without .git
    name: str = Field("", validate_default=True)
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

    @field_validator("repo", "ref")
    @classmethod
    def _git_safe(cls, v: str | None, info: Any) -> str | None:
        return None if v is None else _option_safe(v, info.field_name)

    @field_validator("classes")
    @classmethod
    def _printable_classes(cls, v: list[str]) -> list[str]:
        for i, name in enumerate(v):
            if not name:
                raise ValueError(f"classes[{i}] must not be empty")
            _no_controls(name, f"classes[{i}]")
        return v

    @field_validator("name")
    @classmethod
    def _plain_node_name(cls, v: str, info: Any) -> str:
        if v:
            return _plain(v, "node name")
        if "repo" in info.data and info.data["repo"] is None:
            # no repo: a registry_id node lands in custom_nodes/<registry_id> (a plain name)
            return info.data.get("registry_id") or v
        repo = info.data.get("repo")
        if not isinstance(repo, str):
            return v  # the repo itself is invalid: that error is reported
        try:
            return plain_name(repo_folder_name(repo), what="node name")
        except UnsafeName as exc:
            raise ValueError(
                f"{exc} (the last path segment of repo {_shown_url(repo)!r}); "
                'set name = "…" to give this node a plain folder name'
            ) from None

    @model_validator(mode="after")
    def _repo_or_registry_id(self) -> NodeEntry:
        if not self.repo and not self.registry_id:
            raise ValueError('needs repo = "<git URL>" or registry_id = "<Comfy Registry id>"')
        return self


def _node_source(node: NodeEntry) -> str:
    """A node's repo (redacted) or its registry id, for messages."""
    return redact_url(node.repo) if node.repo else f"registry_id {node.registry_id!r}"


class ValidateSettings(_Strict):
    """Post-install checks."""

    strict: bool = False
    min_size: Size = 100 * 1024 * 1024
    require: dict[str, int] = Field(default_factory=dict)
    warn: dict[str, int] = Field(default_factory=dict)

    @field_validator("require", "warn")
    @classmethod
    def _plain_folders(cls, v: dict[str, int], info: Any) -> dict[str, int]:
        for folder in v:
            try:
                plain_name(folder, what="folder")
            except UnsafeName as exc:
                raise _FieldError(
                    ("validate", info.field_name, folder),
                    f"{exc}: a folder key is one plain name, e.g. 'checkpoints'",
                ) from None
        return v


class WorkflowEntry(_Strict):
    """A workflow JSON to install into ComfyUI's user workflows, with output settings."""

    path: str
    set: dict[str, str | int | float | bool] = Field(default_factory=dict)

    @field_validator("path")
    @classmethod
    def _printable_path(cls, v: str) -> str:
        return _no_controls(v, "path")

    @field_validator("set")
    @classmethod
    def _class_dot_input(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key, value in v.items():
            if not re.fullmatch(r"[^.\s]+\.[^.\s]+", key) or key != escape_controls(key):
                raise ValueError(
                    f"key {escape_controls(key)!r} must be '<NodeClass>.<input>', "
                    "e.g. 'SaveImage.filename_prefix'"
                )
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{key} = {value}: not a finite number (JSON has no {value})")
            if isinstance(value, str) and "\x00" in value:
                raise ValueError(f"{key}: the value contains a NUL character")
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
        names: dict[str, int] = {}
        for i, node in enumerate(self.nodes):
            other = names.setdefault(node.name.casefold(), i)
            if other != i:
                raise _FieldError(
                    ("nodes", i, "name"),
                    f"custom_nodes/{node.name} is also the folder of nodes[{other}] "
                    f"({_node_source(self.nodes[other])}); give one of them its own folder "
                    f'with name = "{node.name}-2" (two forks need two names)',
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


def repo_folder_name(repo: str) -> str:
    """The last path segment of a git repo (URL, ``user@host:path`` or local path), no ``.git``."""
    if "://" in repo:
        try:
            path = urlsplit(repo).path
        except ValueError:
            path = re.split(r"[?#]", repo, maxsplit=1)[0]
    elif re.match(r"^[^/]+:", repo):  # scp-like syntax: git@github.com:owner/repo.git
        path = repo.split(":", 1)[1]
    else:
        path = repo
    return path.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git")


def _port_arg(args: list[str]) -> str | None:
    """The value of ``--port`` (or ``--port=N``) in ComfyUI's args, None when absent."""
    for i, arg in enumerate(args):
        if arg == "--port" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--port="):
            return arg.split("=", 1)[1]
    return None


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
    except RecursionError:
        raise _too_deep(name) from None
    try:
        return parse_manifest(data, source=name, base_dir=path.resolve().parent)
    except RecursionError:
        raise _too_deep(name) from None


def _too_deep(name: str) -> ManifestError:
    # tomllib and PyYAML parse nested arrays/tables recursively: thousands of levels
    # exhaust the stack. No manifest key nests more than three levels deep.
    return ManifestError(
        f"{name}: (top level): nested too deeply to parse",
        hint="a manifest nests at most a few levels (a table of tables of values)",
    )
