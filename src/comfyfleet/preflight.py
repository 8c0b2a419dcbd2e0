"""Preflight: will every model in a manifest download? Answered without downloading anything.

:func:`check_manifest` resolves every entry concurrently (bounded) through
:func:`comfyfleet.sources.resolve`, classifies failures by the error's ``status``, lists a
Hugging Face repo to suggest the paths a wrong URL probably meant, and compares free disk
space under ``--root`` with what the models need.
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from comfyfleet.errors import NotFound, SourceError
from comfyfleet.install.registry import resolve_registry_id
from comfyfleet.manifest import Manifest, ModelEntry
from comfyfleet.redact import redact_text, redact_url
from comfyfleet.retry import RetryPolicy
from comfyfleet.sources import (
    CivitaiFile,
    closest_paths,
    effective_url,
    kind_of,
    list_repo_files,
    parse_hf_url,
    resolve,
)
from comfyfleet.sources.huggingface import resolve_url_for
from comfyfleet.units import format_size

#: probes in flight at once
DEFAULT_CONCURRENCY = 64
#: free space kept beyond the models' total: a fraction of it plus a fixed amount
HEADROOM_FRACTION = 0.05
HEADROOM_FIXED = 1 << 30

STATUSES = (
    "ok",
    "not_found",
    "gated_no_token",
    "gated_no_access",
    "civitai_token_required",
    "not_a_model",
    "server_error",
    "unreachable",
)


@dataclass
class EntryResult:
    """The verdict on one ``[[models]]`` entry (the ``entries[]`` of ``check --json``)."""

    url: str  # redacted
    folder: str
    filename: str | None
    status: str
    size: int | None = None
    sha256: str | None = None
    suggestions: list[str] = field(default_factory=list)
    message: str = ""
    required: bool = True
    kind: str = "http"
    #: Civitai: the API's name for the file when it differs from the one served
    api_filename: str | None = None
    #: things that will not stop the download but deserve a look
    warnings: list[str] = field(default_factory=list)
    #: notes about the entry's host rather than the file (a token withheld over plain http)
    host_warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class DiskResult:
    """Free space under the root vs what the models need."""

    path: str
    free: int
    needed: int  # bytes of the models not yet on disk (known sizes only)
    headroom: int
    unknown_sizes: int  # entries whose size nobody could tell

    @property
    def sufficient(self) -> bool:
        return self.free >= self.needed + self.headroom


@dataclass
class NodePin:
    """A ``[[nodes]]`` entry: pinned or not; a ``registry_id`` resolved to its repo, or not."""

    repo: str
    ref: str | None
    status: str  # "pinned" | "unpinned" | "unresolved" (registry_id the registry cannot map)
    message: str = ""
    registry_id: str | None = None
    critical: bool = False


@dataclass
class CheckReport:
    """Everything ``check`` found; :meth:`to_json` is the ``check --json`` document."""

    entries: list[EntryResult]
    disk: DiskResult
    nodes: list[NodePin] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every required entry is ok, the disk can hold the models, and every critical
        node's registry_id resolves."""
        nodes_ok = not any(n.status == "unresolved" and n.critical for n in self.nodes)
        return all(e.ok for e in self.entries if e.required) and self.disk.sufficient and nodes_ok

    @property
    def warnings(self) -> list[str]:
        out = [f"optional {e.filename or e.url}: {e.status}" for e in self.entries
               if not e.ok and not e.required]  # fmt: skip
        out += [
            f"{n.repo or n.registry_id}: {n.message}"
            for n in self.nodes
            if n.status == "unpinned" or (n.status == "unresolved" and not n.critical)
        ]
        out += [f"{e.filename}: {w}" for e in self.entries for w in e.warnings]
        out += [w for e in self.entries for w in e.host_warnings]
        return list(dict.fromkeys(out))  # a host's note once, however many files it serves

    @property
    def node_errors(self) -> list[str]:
        """Critical nodes whose registry_id did not resolve to a repository."""
        return [f"node {n.registry_id}: {n.message}" for n in self.nodes
                if n.status == "unresolved" and n.critical]  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        disk = asdict(self.disk) | {"sufficient": self.disk.sufficient}
        return {
            "ok": self.ok,
            "entries": [asdict(e) for e in self.entries],
            "disk": disk,
            "nodes": [asdict(n) for n in self.nodes],
            "warnings": self.warnings,
            "errors": self.node_errors,
        }


async def _suggest(session: aiohttp.ClientSession, url: str) -> list[str]:
    """For a missing HF file: the closest existing files of the repo, as full URLs."""
    target = effective_url(url)
    loc = parse_hf_url(target)
    if loc is None:
        return []
    try:
        files = await list_repo_files(session, loc)
    except SourceError:
        return []
    return [resolve_url_for(loc, p, url) for p in closest_paths(loc.path, files)]


async def check_entry(
    session: aiohttp.ClientSession, entry: ModelEntry, policy: RetryPolicy | None = None
) -> EntryResult:
    """Probe one entry; every failure becomes a status with a message saying what to do."""
    result = EntryResult(
        url=redact_url(entry.url),
        folder=entry.folder,
        filename=entry.filename,
        status="ok",
        size=entry.size,
        sha256=entry.sha256,
        required=entry.required,
        kind=kind_of(entry.url),
    )
    try:
        remote = await resolve(session, entry, policy=policy, notes=result.host_warnings)
    except SourceError as exc:
        result.status = exc.status
        result.message = redact_text(str(exc))
        if isinstance(exc, NotFound) and result.kind == "huggingface":
            result.suggestions = [redact_url(s) for s in await _suggest(session, entry.url)]
            if result.suggestions:
                result.message += f"; did you mean {result.suggestions[0].rsplit('/', 1)[-1]}?"
        return result
    except Exception as exc:  # a bug or an unmapped failure: report it, never a traceback
        result.status = "server_error"
        result.message = redact_text(f"unexpected {type(exc).__name__}: {exc}")
        return result
    result.filename = remote.filename
    result.size = remote.size
    result.sha256 = remote.sha256
    parts = [format_size(remote.size) if remote.size is not None else "size unknown"]
    parts.append("sha256 known" if remote.sha256 else "no sha256 (size check only)")
    if isinstance(remote, CivitaiFile):
        result.api_filename = remote.api_filename
        if remote.api_filename:
            parts.append(
                f"Civitai serves it as {remote.served_filename or remote.filename!r} "
                f"(Content-Disposition), its API calls it {remote.api_filename!r}"
            )
        if entry.filename and remote.served_filename and entry.filename != remote.served_filename:
            parts.append(f"saved as {entry.filename!r} (manifest), served as "
                         f"{remote.served_filename!r}")  # fmt: skip
    if entry.size is not None and remote.size is not None and entry.size != remote.size:
        result.warnings.append(
            f"manifest size {entry.size} differs from the server's {remote.size}: "
            "the download will fail verification unless the manifest is fixed"
        )
    result.message = "; ".join(parts)
    return result


def _existing_ancestor(path: Path) -> Path:
    path = path.resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(manifest: Manifest, root: Path, entries: list[EntryResult]) -> DiskResult:
    """Free space where the models land vs the sizes of those not already there."""
    needed = 0
    unknown = 0
    for entry, result in zip(manifest.models, entries, strict=True):
        if result.size is None:
            unknown += 1
            continue
        if result.filename:
            try:
                target = manifest.model_path(root, entry, result.filename)
            except ValueError:  # not a plain name: the download refuses it, nothing is there
                target = None
            if target is not None and target.is_file() and target.stat().st_size == result.size:
                continue
        needed += result.size
    where = _existing_ancestor(manifest.comfyui_dir(root) / "models")
    free = shutil.disk_usage(where).free
    headroom = int(needed * HEADROOM_FRACTION) + HEADROOM_FIXED
    return DiskResult(str(where), free, needed, headroom, unknown)


def check_nodes(
    manifest: Manifest, repos: dict[str, str | Exception] | None = None
) -> list[NodePin]:
    """Pinned or not, per node (an unpinned node installs whatever its branch is today);
    ``repos`` maps each ``registry_id`` to its resolved repo or the error resolving it."""
    out = []
    for node in manifest.nodes:
        repo = node.repo
        if repo is None and node.registry_id:
            found = (repos or {}).get(node.registry_id)
            if not isinstance(found, str):
                why = redact_text(str(found)) if found else "not resolved"
                out.append(NodePin("", node.ref, "unresolved", why, node.registry_id,
                                      node.critical))  # fmt: skip
                continue
            repo = found
        result = NodePin(redact_url(repo or ""), node.ref, "pinned",
                            registry_id=node.registry_id, critical=node.critical)  # fmt: skip
        if not node.ref:
            result.status = "unpinned"
            result.message = (
                "no ref: installs the default branch as it is that day; "
                'pin it with ref = "<commit or tag>"'
            )
        out.append(result)
    return out


async def resolve_registry_nodes(
    session: aiohttp.ClientSession, manifest: Manifest
) -> dict[str, str | Exception]:
    """Each ``registry_id`` of a node without ``repo`` → its repository, or why not."""
    ids = sorted({n.registry_id for n in manifest.nodes if n.registry_id and not n.repo})
    out: dict[str, str | Exception] = {}

    async def one(node_id: str) -> None:
        try:
            out[node_id] = (await resolve_registry_id(session, node_id)).repository
        except SourceError as exc:
            out[node_id] = exc

    async with asyncio.TaskGroup() as tg:
        for node_id in ids:
            tg.create_task(one(node_id))
    return out


def new_session(concurrency: int = DEFAULT_CONCURRENCY) -> aiohttp.ClientSession:
    """A session for probing: no total timeout (each probe has its own), bounded connections."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency * 2, limit_per_host=concurrency),
        timeout=aiohttp.ClientTimeout(total=None),  # per request: RetryPolicy's timeouts
    )


async def check_manifest(
    manifest: Manifest, root: Path | str = ".", *, concurrency: int = DEFAULT_CONCURRENCY
) -> CheckReport:
    """Probe every model of ``manifest`` (at most ``concurrency`` at once), check the disk
    under ``root`` and the nodes' pins. Downloads nothing; never raises for a bad entry."""
    gate = asyncio.Semaphore(concurrency)
    policy = RetryPolicy.for_check(manifest.download)
    results: list[EntryResult | None] = [None] * len(manifest.models)

    async with new_session(concurrency) as session:

        async def probe(i: int, entry: ModelEntry) -> None:
            async with gate:
                results[i] = await check_entry(session, entry, policy)

        async with asyncio.TaskGroup() as tg:
            for i, entry in enumerate(manifest.models):
                tg.create_task(probe(i, entry))
            repos_task = tg.create_task(resolve_registry_nodes(session, manifest))

    entries = [r for r in results if r is not None]
    disk = await asyncio.to_thread(check_disk, manifest, Path(root), entries)
    return CheckReport(entries=entries, disk=disk, nodes=check_nodes(manifest, repos_task.result()))
