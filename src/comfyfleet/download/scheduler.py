"""All of a manifest's models through one global queue: ``download_all``.

Order of work: (1) a local pass, no network: files recorded in ``verified.json`` with an
unchanged size and mtime are skipped; an existing file that is not recorded is re-hashed when
its sha256 is known, never trusted. (2) The rest are resolved (HF/Civitai redirect once,
bounded parallelism). (3) Downloads run largest-first, ``concurrency`` files at once and at
most ``per_host`` files per host; identical URLs are fetched once and hard-linked. A failed
file never stops the others; mirrors are tried when the primary fails.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from comfyfleet import sources
from comfyfleet.download.engine import FileDownload, Hooks, Verified, link_or_copy
from comfyfleet.download.integrity import check_content, hash_file
from comfyfleet.download.state import VerifiedState
from comfyfleet.download.transfer import session_timeout
from comfyfleet.errors import ComfyfleetError, DiskFull, DownloadError, SourceError
from comfyfleet.events import RunLog
from comfyfleet.manifest import Manifest, ModelEntry
from comfyfleet.redact import redact_text, redact_url
from comfyfleet.retry import RetryPolicy
from comfyfleet.sources.base import RemoteFile

#: resolutions (HEAD / 1-byte probes) in flight at once
RESOLVE_PARALLEL = 8
#: seconds between file_progress events of one file
PROGRESS_EVERY = 0.5


@dataclass
class FileResult:
    """The outcome of one manifest entry (``status``: verified | skipped | failed)."""

    folder: str
    filename: str
    status: str
    bytes: int
    sha256: str | None
    error: str | None
    required: bool
    path: Path
    #: the manifest URL (redacted)
    url: str = ""
    #: bytes fetched over the network for this file in this run
    downloaded: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "folder": self.folder,
            "filename": self.filename,
            "status": self.status,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "error": self.error,
            "required": self.required,
            "url": self.url,
            "path": str(self.path),
            "downloaded": self.downloaded,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class DownloadReport:
    """What ``download_all`` did; ``ok`` is False iff a required file failed."""

    ok: bool
    files: list[FileResult]
    #: bytes fetched over the network in this run
    bytes: int
    seconds: float

    def count(self, status: str) -> int:
        return sum(1 for f in self.files if f.status == status)

    @property
    def throughput(self) -> float:
        """Mean bytes per second over the run's wall time."""
        return self.bytes / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        """The DESIGN.md ``download --json`` document."""
        return {
            "ok": self.ok,
            "files": [f.to_json() for f in self.files],
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "verified": self.count("verified"),
            "skipped": self.count("skipped"),
            "failed": self.count("failed"),
        }


@dataclass
class _Job:
    """One manifest entry on its way through the queue."""

    index: int
    entry: ModelEntry
    filename: str | None
    remote: RemoteFile | None = None
    error: BaseException | None = None
    result: FileResult | None = None
    followers: list[_Job] = field(default_factory=list)
    started: float = 0.0
    downloaded: int = 0
    progress_at: float = 0.0

    @property
    def name(self) -> str:
        if self.filename:
            return self.filename
        tail = urlsplit(self.entry.url).path.rstrip("/").rsplit("/", 1)[-1]
        return tail or self.entry.url

    @property
    def size(self) -> int:
        if self.entry.size is not None:
            return self.entry.size
        return self.remote.size or 0 if self.remote else 0

    @property
    def key(self) -> str:
        return f"{self.entry.folder}/{self.name}"


def _host(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def _cap_key(url: str, per_host: dict[str, int]) -> str | None:
    host = _host(url)
    for key in per_host:
        k = key.lower()
        if host == k or host.endswith("." + k):
            return key
    return None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ComfyfleetError):
        return redact_text(str(exc))
    return redact_text(f"{type(exc).__name__}: {exc}")


class _Run(Hooks):
    """The state of one ``download_all`` call."""

    def __init__(self, manifest: Manifest, root: Path, log: RunLog) -> None:
        self.manifest = manifest
        self.root = Path(root)
        self.log = log
        self.settings = manifest.download
        self.state = VerifiedState(self.root)
        self.downloaded = 0
        self.jobs: list[_Job] = []
        self._by_dl: dict[int, _Job] = {}
        self._warned: set[str] = set()
        self.files_sem = asyncio.Semaphore(self.settings.concurrency)
        self.host_sems = {h: asyncio.Semaphore(c) for h, c in self.settings.per_host.items()}

    # --- events -------------------------------------------------------------------------

    def _fields(self, job: _Job, **extra: Any) -> dict[str, Any]:
        return {
            "folder": job.entry.folder,
            "filename": job.name,
            "url": redact_url(job.entry.url),
            **extra,
        }

    def _status(self, job: _Job, status: str, **extra: Any) -> None:
        self.log.status.files[job.key] = {"status": status, "total": job.size, **extra}
        self.log.write_status(force=status != "downloading")

    def started(self, dl: FileDownload, total: int | None, resumed: int) -> None:
        job = self._by_dl[id(dl)]
        job.filename = dl.dest.name
        job.started = time.monotonic()
        self.log.emit(
            "file_started",
            **self._fields(job, total=total, resumed_from=resumed, bytes=resumed,
                           fetch_host=_host(dl.remote.fetch_url)),
        )  # fmt: skip
        self.log.info(
            f"download {job.key} ({total if total is not None else '?'} bytes"
            + (f", resuming at {resumed}" if resumed else "")
            + ")"
        )
        self._status(job, "downloading", bytes=resumed)

    def progress(self, dl: FileDownload, n: int) -> None:
        job = self._by_dl[id(dl)]
        job.downloaded += n
        self.downloaded += n
        self.log.status.bytes_done += n
        now = time.monotonic()
        if now - job.progress_at >= PROGRESS_EVERY:
            job.progress_at = now
            done = dl.done_bytes if dl.seg else job.downloaded
            elapsed = max(1e-6, now - job.started)
            self.log.emit(
                "file_progress",
                **self._fields(job, bytes=done, total=dl.size,
                               speed=round(job.downloaded / elapsed)),
            )  # fmt: skip
            self._status(job, "downloading", bytes=done)

    def retry(self, dl: FileDownload, exc: BaseException, attempt: int, delay: float) -> None:
        job = self._by_dl[id(dl)]
        reason = _describe(exc)
        self.log.emit(
            "file_retry",
            **self._fields(job, attempt=attempt, delay=round(delay, 3), reason=reason,
                           bytes=dl.done_bytes, total=dl.size),
        )  # fmt: skip
        self.log.error(
            job.key,
            f"retrying in {delay:.1f}s: {reason}",
            url=redact_url(dl.remote.fetch_url),
            attempt=attempt,
            error=type(exc).__name__,
        )

    # --- phases -------------------------------------------------------------------------

    def plan(self) -> None:
        for i, entry in enumerate(self.manifest.models):
            job = _Job(i, entry, entry.filename)
            self.jobs.append(job)
            self.log.emit("file_queued", **self._fields(job, bytes=0, total=entry.size,
                          required=entry.required))  # fmt: skip
            self._status(job, "queued", bytes=0)
        self.log.status.bytes_total = sum(j.size for j in self.jobs)

    def _dest(self, job: _Job, filename: str) -> Path:
        return self.manifest.model_path(self.root, job.entry, filename)

    async def local_check(self, job: _Job) -> bool:
        """Skip a file that is verified already (no network); True when skipped."""
        entry = job.entry
        folder_dir = self.manifest.comfyui_dir(self.root) / "models" / entry.folder
        if job.filename:
            path = self._dest(job, job.filename)
            rec = self.state.get(path)
        else:
            found = self.state.find_by_url(folder_dir, redact_url(entry.url))
            path, rec = found if found else (None, None)
        if path is None:
            return False
        if rec is not None and self._record_fits(entry, rec):
            self._skip(job, path, rec["sha256"], "verified earlier")
            return True
        # Exists but not recorded as verified: re-check it, never trust it.
        if entry.sha256 and path.exists() and await self._matches(path, entry.sha256, entry.size):
            self.state.record(path, entry.sha256, redact_url(entry.url))
            self._skip(job, path, entry.sha256, "already present, sha256 checked")
            return True
        return False

    def _record_fits(self, entry: ModelEntry, rec: dict[str, Any]) -> bool:
        if entry.size is not None and rec.get("size") != entry.size:
            return False
        if entry.sha256:
            return rec.get("sha256") == entry.sha256
        urls = {redact_url(u) for u in [entry.url, *entry.mirrors]}
        return rec.get("url") in urls

    async def _matches(self, path: Path, sha256: str, size: int | None) -> bool:
        try:
            if size is not None and path.stat().st_size != size:
                return False
            digest = await asyncio.to_thread(hash_file, path)
            if digest != sha256.lower():
                return False

            def read_at(off: int, n: int) -> bytes:
                with open(path, "rb") as fh:
                    return os.pread(fh.fileno(), n, off)

            check_content(read_at, path.stat().st_size, path.name)
            return True
        except (OSError, ComfyfleetError):
            return False

    def _skip(self, job: _Job, path: Path, sha256: str, why: str) -> None:
        job.filename = path.name
        size = path.stat().st_size
        job.result = FileResult(
            job.entry.folder, path.name, "skipped", size, sha256, None,
            job.entry.required, path, url=redact_url(job.entry.url),
        )  # fmt: skip
        self.log.emit("file_skipped", **self._fields(job, bytes=size, total=size, reason=why))
        self.log.info(f"skip {job.key}: {why}")
        self._status(job, "skipped", bytes=size)

    async def resolve(self, job: _Job, url: str) -> RemoteFile:
        """Resolve ``url`` for ``job``; its requests are retried inside, under the one policy."""

        def on_retry(exc: BaseException, attempt: int, delay: float) -> None:
            self.log.emit("file_retry", **self._fields(job, attempt=attempt,
                          delay=round(delay, 3), reason=_describe(exc)))  # fmt: skip
            self.log.error(job.key, f"resolving, retry in {delay:.1f}s: {_describe(exc)}",
                           url=redact_url(url), attempt=attempt)  # fmt: skip

        policy = RetryPolicy.for_download(self.settings).with_on_retry(on_retry)
        notes: list[str] = []
        try:
            return await sources.resolve(self.session, job.entry, url, policy=policy, notes=notes)
        finally:
            for note in notes:
                if note not in self._warned:  # one line per host, not one per file
                    self._warned.add(note)
                    self.log.info(f"warning: {note}")

    async def prefetch(self, job: _Job, sem: asyncio.Semaphore) -> None:
        """Resolve the primary URL ahead of the queue (sizes for largest-first ordering)."""
        async with sem:
            try:
                job.remote = await self.resolve(job, job.entry.url)
                job.filename = job.filename or job.remote.filename
            except SourceError as exc:
                job.error = exc

    async def run_job(self, job: _Job) -> None:
        """Download one leader (then link its followers), under the global and host caps."""
        cap = _cap_key(job.entry.url, self.settings.per_host)
        try:
            async with self.files_sem:
                if cap is not None:
                    async with self.host_sems[cap]:
                        await self._download(job)
                else:
                    await self._download(job)
        except Exception as exc:  # a bug in one file's path must not abort the others
            self._fail(job, exc)
        for follower in job.followers:
            self._follow(follower, job)

    async def _download(self, job: _Job) -> None:
        t0 = time.monotonic()
        urls = [job.entry.url, *job.entry.mirrors]
        last: BaseException | None = None
        for i, url in enumerate(urls):
            if i > 0:
                self.log.info(f"{job.key}: trying mirror {redact_url(url)}")
            try:
                if i == 0 and job.remote is not None:
                    remote = job.remote
                elif i == 0 and job.error is not None:
                    raise job.error
                else:
                    remote = await self.resolve(job, url)
                verified = await self._fetch(job, remote, url, has_mirror=i + 1 < len(urls))
            except DiskFull as exc:
                last = exc
                break
            except (ComfyfleetError, OSError, aiohttp.ClientError, TimeoutError) as exc:
                last = exc
                more = " — trying a mirror" if i + 1 < len(urls) else ""
                self.log.error(job.key, _describe(exc) + more, url=redact_url(url))
                continue
            job.result = FileResult(
                job.entry.folder, verified.path.name,
                "skipped" if verified.skipped else "verified",
                verified.size, verified.sha256, None, job.entry.required, verified.path,
                url=redact_url(job.entry.url), downloaded=job.downloaded,
                seconds=time.monotonic() - t0,
            )  # fmt: skip
            if not verified.skipped:
                self.log.emit(
                    "file_verified",
                    **self._fields(job, bytes=verified.size, total=verified.size,
                                   sha256=verified.sha256, downloaded=job.downloaded,
                                   seconds=round(time.monotonic() - t0, 3)),
                )  # fmt: skip
                self.log.info(f"verified {job.key} sha256={verified.sha256}")
                self._status(job, "verified", bytes=verified.size)
            return
        self._fail(job, last or DownloadError("no URL to download from"), time.monotonic() - t0)

    def _fail(self, job: _Job, exc: BaseException, seconds: float = 0.0) -> None:
        reason = _describe(exc)
        filename = job.name
        job.result = FileResult(
            job.entry.folder, filename, "failed", 0, None, reason, job.entry.required,
            self._dest(job, filename), url=redact_url(job.entry.url),
            downloaded=job.downloaded, seconds=seconds,
        )  # fmt: skip
        level = "FAILED" if job.entry.required else "failed (optional, continuing)"
        self.log.emit("file_failed", **self._fields(job, error=reason, bytes=0, total=job.size,
                      required=job.entry.required, kind=type(exc).__name__))  # fmt: skip
        self.log.error(job.key, f"{level}: {reason}", url=redact_url(job.entry.url),
                       error=type(exc).__name__, attempts=None)  # fmt: skip
        self._status(job, "failed", error=reason)

    async def _fetch(
        self, job: _Job, remote: RemoteFile, url: str, *, has_mirror: bool = False
    ) -> Verified:
        filename = job.entry.filename or remote.filename
        dest = self._dest(job, filename)
        job.filename = dest.name
        sha = job.entry.sha256 or (remote.sha256.lower() if remote.sha256 else None)
        rec = self.state.get(dest)
        if rec is not None and (
            rec.get("sha256") == sha if sha else self._record_fits(job.entry, rec)
        ):
            self._skip(job, dest, rec["sha256"], "verified earlier")
            return Verified(dest, rec["size"], rec["sha256"], 0, skipped=True)
        if sha and dest.exists() and await self._matches(dest, sha, job.entry.size or remote.size):
            self.state.record(dest, sha, redact_url(job.entry.url))
            self._skip(job, dest, sha, "already present, sha256 checked")
            return Verified(dest, dest.stat().st_size, sha, 0, skipped=True)

        async def reresolve() -> RemoteFile:
            return await self.resolve(job, url)

        dl = FileDownload(
            self.session, job.entry, remote, dest, self.settings, self, reresolve,
            has_mirror=has_mirror,
        )  # fmt: skip
        self._by_dl[id(dl)] = job
        try:
            async with asyncio.timeout(self.settings.file_timeout or None):
                verified = await dl.run()
        except TimeoutError:
            raise DownloadError(
                f"{dest.name}: not finished within download.file_timeout "
                f"({self.settings.file_timeout:g}s)",
                hint="the .part file is kept and resumes; raise file_timeout for very large "
                "files on slow hosts",
            ) from None
        finally:
            self._by_dl.pop(id(dl), None)
        self.state.record(dest, verified.sha256, redact_url(job.entry.url))
        return verified

    def _follow(self, job: _Job, leader: _Job) -> None:
        """A second entry with the leader's URL: a hard link to the verified file."""
        lead = leader.result
        assert lead is not None
        if lead.status == "failed":
            self._fail(job, DownloadError(f"same URL as {leader.key}, which failed: {lead.error}"))
            return
        filename = job.entry.filename or lead.filename
        job.filename = filename
        dest = self._dest(job, filename)
        if job.entry.sha256 and job.entry.sha256 != lead.sha256:
            self._fail(
                job,
                DownloadError(
                    f"{filename}: the manifest's sha256 differs from {leader.key}'s, same URL"
                ),
            )
            return  # fmt: skip
        try:
            if dest != lead.path:
                link_or_copy(lead.path, dest)
        except OSError as exc:
            self._fail(job, DownloadError(f"cannot link {lead.path} to {dest}: {exc}"))
            return
        self.state.record(dest, lead.sha256 or "", redact_url(job.entry.url))
        job.result = FileResult(
            job.entry.folder, filename, "verified", lead.bytes, lead.sha256, None,
            job.entry.required, dest, url=redact_url(job.entry.url),
        )  # fmt: skip
        self.log.emit("file_verified", **self._fields(job, bytes=lead.bytes, total=lead.bytes,
                      sha256=lead.sha256, linked_to=str(lead.path), downloaded=0))  # fmt: skip
        self.log.info(f"verified {job.key}: hard link to {leader.key} (same URL)")
        self._status(job, "verified", bytes=lead.bytes)

    async def run(self) -> None:
        self.plan()
        pending = [j for j in self.jobs if not await self.local_check(j)]
        leaders: dict[str, _Job] = {}
        for job in pending:
            lead = leaders.get(job.entry.url)
            if lead is None:
                leaders[job.entry.url] = job
            else:
                lead.followers.append(job)
        if not leaders:
            return
        budget = self.settings.concurrency * self.settings.connections_per_file
        connector = aiohttp.TCPConnector(limit=budget + RESOLVE_PARALLEL, limit_per_host=0)
        async with aiohttp.ClientSession(
            connector=connector, timeout=session_timeout(), auto_decompress=False
        ) as session:
            self.session = session
            sem = asyncio.Semaphore(RESOLVE_PARALLEL)
            async with asyncio.TaskGroup() as tg:
                for job in leaders.values():
                    tg.create_task(self.prefetch(job, sem))
            self.log.status.bytes_total = sum(j.size for j in self.jobs)
            order = sorted(leaders.values(), key=lambda j: j.size, reverse=True)
            async with asyncio.TaskGroup() as tg:
                for job in order:
                    tg.create_task(self.run_job(job))


async def download_all(
    manifest: Manifest, root: Path, log: RunLog, *, progress: bool | None = None
) -> DownloadReport:
    """Download and verify every model of ``manifest`` under ``root``.

    Emits the file_* events itself and never raises for one file's failure; ``report.ok`` is
    False iff a required file failed. Cancellation (Ctrl-C/SIGTERM) propagates after every
    part file's sidecar was saved: a re-run resumes, and no final file is half-written.
    ``progress``: None = rich bars on a TTY, plain lines on stderr otherwise; False = none.
    """
    from comfyfleet.progress import ProgressRenderer

    t0 = time.monotonic()
    log.set_phase("download")
    run = _Run(manifest, root, log)
    renderer = ProgressRenderer.start(log, enabled=progress)
    try:
        await run.run()
    finally:
        renderer.stop()
    files = [j.result for j in run.jobs if j.result is not None]
    ok = all(f.status != "failed" or not f.required for f in files)
    report = DownloadReport(ok, files, run.downloaded, time.monotonic() - t0)
    log.info(
        f"downloads: {report.count('verified')} verified, {report.count('skipped')} skipped, "
        f"{report.count('failed')} failed; {report.bytes} bytes in {report.seconds:.1f}s"
    )
    return report
