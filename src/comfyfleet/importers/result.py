"""What an importer found, and the one writer that turns it into a commented TOML manifest.

Both importers (bash scripts, workflows) fill an :class:`ImportResult`; :func:`render` writes
it. The writer makes the round-trip promise hold: one entry per destination (a second entry
for the same ``folder/subfolder/filename`` becomes a comment naming the first), folder keys
the manifest accepts, and every skipped thing named with its line. The TOML is written by hand
because it carries comments; strings are JSON-escaped, which is valid TOML.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from urllib.parse import unquote, urlsplit

from comfyfleet.manifest import CORE_FOLDERS, FOLDER_ALIASES, canonical_folder
from comfyfleet.names import UnsafeName, escape_controls, plain_name
from comfyfleet.redact import redact_text, redact_url

#: longest excerpt of a source line quoted in a comment or on stderr
EXCERPT = 160


@dataclass
class ImportedModel:
    """One ``[[models]]`` entry, or (``commented``) a block left for the user to decide."""

    url: str
    folder: str
    filename: str | None = None
    subfolder: str = ""
    sha256: str | None = None
    required: bool = True
    notes: list[str] = field(default_factory=list)
    line: int = 0
    #: why the entry is written as a comment instead of a live entry ("" = live)
    commented: str = ""

    @property
    def destination(self) -> tuple[str, str, str]:
        """(canonical folder, subfolder, name) as ComfyUI will list it; the name falls back to
        the URL's last path segment (what the downloader would use)."""
        name = self.filename or unquote(PurePosixPath(urlsplit(self.url).path).name)
        return canonical_folder(self.folder), self.subfolder, name


@dataclass
class ImportedNode:
    """One ``[[nodes]]`` entry."""

    repo: str | None = None
    registry_id: str | None = None
    ref: str | None = None
    classes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    line: int = 0
    commented: str = ""
    #: the folder the input put it in under custom_nodes/ (matches later commands to it)
    folder: str = ""


@dataclass
class Skipped:
    """Something of the input the importer did not turn into an entry, and why."""

    line: int  # 0 when the input has no lines (a workflow)
    text: str
    why: str

    def describe(self) -> str:
        """``line 12: wget -i list.txt — reads URLs from a file``."""
        where = f"line {self.line}: " if self.line else ""
        return f"{where}{excerpt(self.text)} — {self.why}"


@dataclass
class ImportResult:
    """Everything read from one input file."""

    source: str
    models: list[ImportedModel] = field(default_factory=list)
    nodes: list[ImportedNode] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    workflows: list[str] = field(default_factory=list)
    #: header comment lines after the standard ones
    notes: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        """True when nothing live came out: no model and no node."""
        live_models = [m for m in self.models if not m.commented]
        return not live_models and not [n for n in self.nodes if not n.commented]

    def skip(self, line: int, text: str, why: str) -> None:
        """Record a skipped thing."""
        self.skipped.append(Skipped(line, text, why))


def node_folder_problem(repo: str) -> str | None:
    """Why the folder a repo would get under ``custom_nodes/`` (its last segment) is not a
    plain name, or None: ``…/sub/..`` must never check out over ComfyUI itself."""
    tail = repo.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git")
    try:
        plain_name(tail, what="node folder")
    except UnsafeName as exc:
        return f"refused: {exc}"
    return None


def excerpt(text: str) -> str:
    """``text`` on one line, secrets redacted, control characters escaped, cut to
    :data:`EXCERPT` characters (a quoted script line may carry ``?token=…``)."""
    text = re.sub(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]+", lambda m: redact_url(m.group()), text)
    text = redact_text(re.sub(r"(?i)\b(token=)[^&\s'\"]+", r"\1***", text))
    flat = " ".join(escape_controls(text).split())
    return flat if len(flat) <= EXCERPT else flat[: EXCERPT - 1] + "…"


def _s(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def _comment(text: str) -> str:
    return "# " + " ".join(escape_controls(text).split())


def extra_folders(models: list[ImportedModel]) -> list[str]:
    """Folder keys of live entries that are neither core keys nor aliases, in order."""
    out: list[str] = []
    for m in models:
        if m.commented or m.folder in CORE_FOLDERS or m.folder in FOLDER_ALIASES:
            continue
        if m.folder not in out:
            out.append(m.folder)
    return out


def one_per_destination(result: ImportResult) -> None:
    """Comment out every live entry whose destination an earlier live entry already has."""
    first: dict[tuple[str, str, str], ImportedModel] = {}
    for m in result.models:
        if m.commented:
            continue
        dest = m.destination
        earlier = first.get(dest)
        if earlier is None:
            first[dest] = m
            continue
        where = f"line {earlier.line}" if earlier.line else "an entry above"
        shown = "/".join(p for p in (m.folder, m.subfolder, dest[2]) if p)
        if earlier.url == m.url:
            m.commented = f"the same file as {where} ({shown})"
        else:
            m.commented = (
                f"same destination {shown} as {where}, from another URL; keep one, or give "
                'this one its own filename = "…"'
            )
    seen_nodes: dict[str, int] = {}  # nodes: one per repo / registry id
    folders: set[str] = set()  # and one per folder under custom_nodes/
    for n in result.nodes:
        key = (n.repo or f"registry:{n.registry_id}").removesuffix(".git").lower()
        if n.commented:
            continue
        if key in seen_nodes:
            where = f"line {seen_nodes[key]}" if seen_nodes[key] else "an entry above"
            n.commented = f"the same node as {where}"
            continue
        seen_nodes[key] = n.line
        folder = node_folder(n)
        if folder.casefold() in folders:  # two forks with one basename: the later gets its own
            taken = folder
            k = 2
            while f"{taken}-{k}".casefold() in folders:
                k += 1
            n.folder = f"{taken}-{k}"
            n.notes.append(f"custom_nodes/{taken} is another node's folder: this one gets its own")
            folder = n.folder
        folders.add(folder.casefold())


def node_folder(n: ImportedNode) -> str:
    """The folder a node lands in under ``custom_nodes/``: the input's, else the repo's last
    path segment, else the registry id."""
    if n.folder:
        return n.folder
    if n.repo:
        return n.repo.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git")
    return n.registry_id or ""


def _model_lines(m: ImportedModel) -> list[str]:
    lines = ["[[models]]", *(_comment(n) for n in m.notes)]
    lines += [f"url = {_s(m.url)}", f"folder = {_s(m.folder)}"]
    if m.subfolder:
        lines.append(f"subfolder = {_s(m.subfolder)}")
    if m.filename:
        lines.append(f"filename = {_s(m.filename)}")
    if m.sha256:
        lines.append(f"sha256 = {_s(m.sha256)}")
    if not m.required:
        lines.append("required = false")
    return lines


def _node_lines(n: ImportedNode) -> list[str]:
    lines = ["[[nodes]]", *(_comment(x) for x in n.notes)]
    if n.repo:
        lines.append(f"repo = {_s(n.repo)}")
    if n.registry_id:
        lines.append(f"registry_id = {_s(n.registry_id)}")
    default = (n.repo or "").rstrip("/").rsplit("/", 1)[-1].removesuffix(".git") or n.registry_id
    if n.folder and n.folder != default:
        lines.append(f"name = {_s(n.folder)}")
    if n.ref:
        lines.append(f"ref = {_s(n.ref)}")
    if n.classes:
        lines.append("classes = [" + ", ".join(_s(c) for c in n.classes) + "]")
    return lines


def _commented(why: str, block: list[str]) -> list[str]:
    return [_comment(why + ":"), *(line if line.startswith("#") else "# " + line for line in block)]


def render(result: ImportResult) -> str:
    """The manifest as TOML text with comments (call after the importer has finished)."""
    one_per_destination(result)
    lines = [
        _comment(f"Imported by `comfyfleet import` from {PurePosixPath(result.source).name}."),
        '# Review before use: pin every node with ref = "<commit or tag>", then run',
        "# `comfyfleet check` on this file (it finds wrong URLs, gated repos and missing tokens).",
        *(_comment(n) for n in result.notes),
        "version = 1",
        "",
        "[comfyui]",
        "extra_folders = [" + ", ".join(_s(f) for f in extra_folders(result.models)) + "]",
        "",
    ]
    for m in result.models:
        block = _model_lines(m)
        lines += _commented(m.commented, block) if m.commented else block
        lines.append("")
    for n in result.nodes:
        block = _node_lines(n)
        lines += _commented(n.commented, block) if n.commented else block
        lines.append("")
    for path in result.workflows:
        lines += ["[[workflows]]", f"path = {_s(path)}", ""]
    if result.skipped:
        lines.append("# Not imported (no manifest equivalent, or not understood; handle by hand):")
        lines += [_comment(s.describe()) for s in result.skipped]
        lines.append("")
    return "\n".join(lines)
