"""What a download run will do, decided without the network: :class:`DownloadPlan`.

For every manifest entry the plan knows where it lands (:func:`destination`, the one place a
model path is built, proved to stay under ``models/``), whether a verified record lets it be
skipped, which entries share a URL (one :class:`Fetch`: downloaded once, hard-linked to the
others) and the order fetches run in (largest first). A destination belongs to one entry:
the later of two entries that resolve to one path is refused, naming both, before any of its
bytes is written. The scheduler does the I/O; the plan only decides.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from comfyfleet.errors import DestinationTaken, DownloadError
from comfyfleet.manifest import Manifest, ModelEntry
from comfyfleet.names import escape_controls, path_under, plain_subpath
from comfyfleet.redact import redact_url

#: a verified.json record: ``{"size", "sha256", "mtime_ns", "url", ...}``
Record = Mapping[str, Any]


def destination(models_dir: Path, entry: ModelEntry, name: str) -> Path:
    """``models/<folder>/<subfolder…>/<name>``, every segment plain and the result inside."""
    return path_under(models_dir, entry.folder, *plain_subpath(entry.subfolder), name)


def where(entry: ModelEntry, name: str) -> str:
    """``folder[/subfolder]/name``: how a destination is shown to people (on one line)."""
    return escape_controls("/".join(p for p in (entry.folder, entry.subfolder, name) if p))


def static_name(entry: ModelEntry) -> str | None:
    """The file name ``entry`` lands under as far as the manifest alone decides, else None.

    ``filename`` when given; else the URL's last path segment (Hugging Face names files so, and
    plain hosts fall back to it) — except a Civitai download URL, named only by its server.
    """
    if entry.filename:
        return entry.filename
    # Imported here: the manifest validator calls this, and sources imports the manifest.
    from comfyfleet.sources.endpoints import kind_of
    from comfyfleet.sources.filenames import filename_from_url

    if kind_of(entry.url) == "civitai":
        return None
    return filename_from_url(entry.url)


@dataclass(frozen=True)
class StaticCollision:
    """Entry ``later`` lands where entry ``earlier`` does, by the manifest alone."""

    later: int
    earlier: int
    where: str
    #: the field of the later entry that decides its name (``filename`` or ``url``)
    field: str

    def message(self) -> str:
        """What a person reads: both entries, the destination and the fix."""
        stem, dot, ext = self.where.rsplit("/", 1)[-1].rpartition(".")
        other = f"{stem}_{self.later}.{ext}" if dot else f"{ext}_{self.later}"
        return (
            f"lands at {self.where}, where models[{self.earlier}] lands too; two entries "
            f'never share a destination: give one of them its own name (filename = "{other}") '
            "or another subfolder, or remove the duplicate"
        )


def static_collisions(models: Sequence[ModelEntry]) -> list[StaticCollision]:
    """Every entry the manifest alone sends to an earlier entry's destination."""
    owners: dict[tuple[str, str, str], int] = {}
    found = []
    for i, entry in enumerate(models):
        name = static_name(entry)
        # Without a name the same URL still means the same file, so the same destination
        # (a NUL never occurs in a plain name, so the two kinds of key cannot meet).
        key = (entry.folder, entry.subfolder, name or f"\0{entry.url}")
        if key in owners:
            shown = where(entry, name or _url_tail(entry.url))
            found.append(
                StaticCollision(i, owners[key], shown, "filename" if entry.filename else "url")
            )
        else:
            owners[key] = i
    return found


def record_fits(entry: ModelEntry, record: Record) -> bool:
    """Whether a verified record is the file ``entry`` asks for (sha256, else URL and size)."""
    if entry.size is not None and record.get("size") != entry.size:
        return False
    if entry.sha256:
        return record.get("sha256") == entry.sha256
    return record.get("url") in {redact_url(u) for u in [entry.url, *entry.mirrors]}


def _url_tail(url: str) -> str:
    return unquote(urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]) or url


@dataclass(frozen=True)
class Skip:
    """A file that is verified already: nothing to fetch."""

    path: Path
    sha256: str
    size: int
    reason: str


@dataclass(eq=False)
class PlannedFile:
    """One manifest entry in the plan."""

    index: int
    entry: ModelEntry
    #: the final file name once known (the manifest's, else the resolved one)
    name: str | None
    #: the destination this entry owns (set by :meth:`DownloadPlan.claim`)
    dest: Path | None = None
    #: expected size: the manifest's, else the server's once resolved
    size: int | None = None
    skip: Skip | None = None
    #: why the plan will not fetch this entry (its destination is taken, or not a safe path)
    refused: DownloadError | None = None

    @property
    def where(self) -> str:
        """``folder[/subfolder]/name`` (the URL's last segment while the name is unknown)."""
        return where(self.entry, self.name or _url_tail(self.entry.url))

    @property
    def active(self) -> bool:
        """Neither skipped nor refused: the run still has to deliver it."""
        return self.skip is None and self.refused is None


@dataclass(eq=False)
class Fetch:
    """Entries with one URL: its bytes are fetched once and hard-linked to the others."""

    url: str
    files: list[PlannedFile] = field(default_factory=list)

    @property
    def size(self) -> int:
        return max((f.size or 0 for f in self.files), default=0)

    @property
    def first(self) -> int:
        return self.files[0].index


class DownloadPlan:
    """The decisions of one download run: destinations, skips, shared URLs, order."""

    def __init__(self, manifest: Manifest, root: Path, records: Mapping[str, Record]) -> None:
        self.root = Path(root)
        self.models_dir = manifest.comfyui_dir(self.root) / "models"
        self.records = records
        self.files = [
            PlannedFile(i, e, e.filename, size=e.size) for i, e in enumerate(manifest.models)
        ]
        self._owners: dict[Path, PlannedFile] = {}
        # Records by (directory, URL): how an entry named by its server is found again.
        self._by_url = {
            ((self.root / key).parent, rec.get("url")): (self.root / key, rec)
            for key, rec in sorted(records.items())
            if isinstance(rec, Mapping)
        }
        for f in self.files:
            self._skip_recorded(f)
            if f.dest is None and f.name is not None and f.refused is None:
                self._try_claim(f, f.name)

    # --- destinations ------------------------------------------------------------------

    def destination(self, entry: ModelEntry, name: str) -> Path:
        """Where ``entry`` lands when its file is called ``name``."""
        return destination(self.models_dir, entry, name)

    def claim(self, file: PlannedFile, name: str) -> Path:
        """Make ``file`` the owner of its destination under ``name``; raise DestinationTaken
        (naming both entries) when an earlier entry owns it, DownloadError when ``name`` is
        not a plain file name. Idempotent for the owner."""
        if file.dest is not None:
            return file.dest
        try:
            path = self.destination(file.entry, name)
        except ValueError as exc:  # UnsafeName: e.g. a server-chosen name with a newline
            raise DownloadError(
                f"models[{file.index}] ({redact_url(file.entry.url)}): {exc}",
                hint='set filename = "…" in the manifest entry to choose a safe name',
            ) from None
        owner = self._owners.get(path)
        if owner is not None and owner is not file:
            raise DestinationTaken(
                f"models[{file.index}] ({redact_url(file.entry.url)}) resolves to "
                f"{where(file.entry, name)}, which models[{owner.index}] "
                f"({redact_url(owner.entry.url)}) already lands at; not downloading it",
                hint=f'give models[{file.index}] its own name: filename = "…" (or a subfolder)',
            )
        self._owners[path] = file
        file.name, file.dest = name, path
        return path

    def _try_claim(self, file: PlannedFile, name: str) -> None:
        try:
            self.claim(file, name)
        except DownloadError as exc:
            file.refused = exc

    def claim_resolved(self, names: Mapping[int, str]) -> list[PlannedFile]:
        """Claim the resolved names (file index → name) in manifest order; return the refused."""
        refused = []
        for file in self.files:
            name = names.get(file.index)
            if file.active and file.dest is None and name:
                self._try_claim(file, name)
                if file.refused is not None:
                    refused.append(file)
        return refused

    # --- skips -------------------------------------------------------------------------

    def _key(self, path: Path) -> str:
        return os.path.relpath(path, self.root)

    def recorded(self, file: PlannedFile) -> tuple[Path, Record | None] | None:
        """The file on record for ``file``: by its destination when named, else by URL."""
        entry = file.entry
        if file.name:
            try:
                path = self.destination(entry, file.name)
            except ValueError:
                return None
            return path, self.records.get(self._key(path))
        folder = self.models_dir.joinpath(entry.folder, *plain_subpath(entry.subfolder))
        return self._by_url.get((folder, redact_url(entry.url)))

    def _skip_recorded(self, file: PlannedFile) -> None:
        found = self.recorded(file)
        if found is None:
            return
        path, rec = found
        if rec is not None and record_fits(file.entry, rec):
            self._try_claim(file, path.name)
            if file.refused is None:
                file.skip = Skip(path, str(rec["sha256"]), int(rec["size"]), "verified earlier")

    def skip_recorded(self, file: PlannedFile, sha256: str | None) -> bool:
        """Skip a claimed ``file`` whose destination is on record as the bytes it asks for
        (``sha256``: the manifest's or the server's, when known); True when skipped."""
        if file.skip is not None:
            return True
        if file.dest is None:
            return False
        rec = self.records.get(self._key(file.dest))
        if rec is None or not (
            rec.get("sha256") == sha256 if sha256 else record_fits(file.entry, rec)
        ):
            return False
        file.skip = Skip(file.dest, str(rec["sha256"]), int(rec["size"]), "verified earlier")
        return True

    def to_recheck(self) -> list[PlannedFile]:
        """Named files with a known sha256 that are not on record: hash what is on disk."""
        return [f for f in self.files if f.active and f.dest is not None and f.entry.sha256]

    def skip(self, file: PlannedFile, sha256: str, size: int, reason: str) -> None:
        """Record that ``file`` is verified already (found and checked by the scheduler)."""
        assert file.dest is not None
        file.skip = Skip(file.dest, sha256, size, reason)

    # --- fetches -----------------------------------------------------------------------

    def fetches(self) -> list[Fetch]:
        """The active files grouped by URL (identical URLs fetched once), in manifest order."""
        by_url: dict[str, Fetch] = {}
        for f in self.files:
            if f.active:
                by_url.setdefault(f.entry.url, Fetch(f.entry.url)).files.append(f)
        return list(by_url.values())

    @staticmethod
    def order(fetches: Iterable[Fetch]) -> list[Fetch]:
        """Largest first (the longest transfer starts earliest), then manifest order."""
        return sorted(fetches, key=lambda x: (-x.size, x.first))
