"""All of a manifest's models through one global queue: ``download_all``.

The :class:`~comfyfleet.download.plan.DownloadPlan` decides (destinations, skips, shared
URLs, order, collisions); this module does the work: (1) a local pass, no network: files on
record in ``verified.json`` are skipped, and a named file on disk that is not on record is
re-hashed when its sha256 is known, never trusted. (2) The rest are resolved (HF/Civitai
redirect once, bounded parallelism) and their names claimed in manifest order, so the later
of two entries that land at one path fails before any of its bytes is written. (3) Fetches
run largest-first, ``concurrency`` files at once and at most ``per_host`` files per host;
identical URLs are fetched once and hard-linked. A failed file never stops the others;
mirrors are tried when the primary fails. Blocking file work runs in threads.

Nothing here renders progress: the CLI subscribes to the run log's events.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from comfyfleet import sources
from comfyfleet.download.content_store import ContentStore, content_key
from comfyfleet.download.engine import FileDownload, Hooks, Verified, link_or_copy
from comfyfleet.download.integrity import check_content, hash_file
from comfyfleet.download.plan import DownloadPlan, Fetch, PlannedFile
from comfyfleet.download.state import VerifiedState
from comfyfleet.download.transfer import session_timeout
from comfyfleet.errors import ComfyfleetError, DiskFull, DownloadError, SourceError
from comfyfleet.events import RunLog
from comfyfleet.manifest import Manifest
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
    subfolder: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "folder": self.folder,
            "subfolder": self.subfolder,
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


@dataclass(eq=False)
class FileJob:
    """The run-time state of one planned file (what the plan does not decide)."""

    file: PlannedFile
    remote: RemoteFile | None = None
    #: why the primary URL did not resolve (its mirrors are still tried)
    error: BaseException | None = None
    result: FileResult | None = None
    started: float = 0.0
    downloaded: int = 0
    progress_at: float = 0.0
    #: the key this file has in status.json (its ``where``, which changes once named)
    status_key: str = ""
    #: the content store entry this file was linked from (nothing was fetched)
    from_store: Path | None = None

    @property
    def key(self) -> str:
        return self.file.where


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


def _matches(path: Path, sha256: str, size: int | None) -> os.stat_result | None:
    """The stat of ``path`` if its bytes hash to ``sha256`` and look like a model (blocking)."""
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            if size is not None and st.st_size != size:
                return None
            if hash_file(path) != sha256.lower():
                return None
            check_content(lambda off, n: os.pread(fh.fileno(), n, off), st.st_size, path.name)
            return st if os.fstat(fh.fileno()).st_mtime_ns == st.st_mtime_ns else None
    except (OSError, ComfyfleetError):
        return None


class FileReporter(Hooks):
    """Turns one file's download callbacks into events, status and errors.log lines."""

    def __init__(self, run: DownloadRun, job: FileJob) -> None:
        self.run = run
        self.job = job

    def started(self, dl: FileDownload, total: int | None, resumed: int) -> None:
        job, run = self.job, self.run
        job.started = time.monotonic()
        run.log.emit(
            "file_started",
            **run.fields(job, total=total, resumed_from=resumed, bytes=resumed,
                         fetch_host=_host(dl.remote.fetch_url)),
        )  # fmt: skip
        run.log.info(
            "download",
            f"{job.key} ({total if total is not None else '?'} bytes"
            + (f", resuming at {resumed}" if resumed else "")
            + ")",
        )
        run.status(job, "downloading", bytes=resumed)

    def progress(self, dl: FileDownload, n: int) -> None:
        job, run = self.job, self.run
        job.downloaded += n
        run.downloaded += n
        run.log.status.bytes_done += n
        now = time.monotonic()
        if now - job.progress_at >= PROGRESS_EVERY:
            job.progress_at = now
            done = dl.done_bytes if dl.seg else job.downloaded
            elapsed = max(1e-6, now - job.started)
            run.log.emit(
                "file_progress",
                **run.fields(job, bytes=done, total=dl.size,
                             speed=round(job.downloaded / elapsed)),
            )  # fmt: skip
            run.status(job, "downloading", bytes=done)

    def retry(self, dl: FileDownload, exc: BaseException, attempt: int, delay: float) -> None:
        job, run = self.job, self.run
        reason = _describe(exc)
        run.log.emit(
            "file_retry",
            **run.fields(job, attempt=attempt, delay=round(delay, 3), reason=reason,
                         bytes=dl.done_bytes, total=dl.size),
        )  # fmt: skip
        run.log.error(
            job.key,
            f"retrying in {delay:.1f}s: {reason}",
            url=redact_url(dl.remote.fetch_url),
            attempt=attempt,
            error=type(exc).__name__,
        )


class DownloadRun:
    """One ``download_all`` call: the plan's fetches through the global and per-host caps."""

    def __init__(
        self,
        manifest: Manifest,
        root: Path,
        log: RunLog,
        state: VerifiedState,
        plan: DownloadPlan,
        store: ContentStore | None = None,
    ) -> None:
        self.manifest = manifest
        self.root = Path(root)
        self.log = log
        self.settings = manifest.download
        self.state = state
        self.plan = plan
        self.store = store
        self.jobs = [FileJob(f) for f in self.plan.files]
        self.downloaded = 0
        self.files_sem = asyncio.Semaphore(self.settings.concurrency)
        self.host_sems = {h: asyncio.Semaphore(c) for h, c in self.settings.per_host.items()}
        self.session: aiohttp.ClientSession | None = None
        self._warned: set[str] = set()

    def job(self, file: PlannedFile) -> FileJob:
        return self.jobs[file.index]

    # --- events -------------------------------------------------------------------------

    def fields(self, job: FileJob, **extra: Any) -> dict[str, Any]:
        entry = job.file.entry
        sub = {"subfolder": entry.subfolder} if entry.subfolder else {}
        return {
            "folder": entry.folder,
            **sub,
            "filename": job.file.name or job.key.rsplit("/", 1)[-1],
            "url": redact_url(entry.url),
            **extra,
        }

    def status(self, job: FileJob, status: str, **extra: Any) -> None:
        files = self.log.status.files
        if job.status_key and job.status_key != job.key:
            files.pop(job.status_key, None)  # the name became known: one entry per file
        job.status_key = job.key
        files[job.key] = {"status": status, "total": job.file.size, **extra}
        self.log.write_status(force=status != "downloading")

    def queue_all(self) -> None:
        for job in self.jobs:
            entry = job.file.entry
            self.log.emit("file_queued", **self.fields(job, bytes=0, total=entry.size,
                          required=entry.required))  # fmt: skip
            self.status(job, "queued", bytes=0)
        self.log.status.bytes_total = sum(j.file.size or 0 for j in self.jobs)

    # --- outcomes -----------------------------------------------------------------------

    def _result(self, job: FileJob, status: str, size: int, sha256: str | None,
                error: str | None = None, seconds: float = 0.0) -> FileResult:  # fmt: skip
        f = job.file
        path = f.dest or self.manifest.model_dir(self.root, f.entry)
        job.result = FileResult(
            f.entry.folder, f.name or f.where.rsplit("/", 1)[-1], status, size, sha256, error,
            f.entry.required, path, url=redact_url(f.entry.url), downloaded=job.downloaded,
            seconds=seconds, subfolder=f.entry.subfolder,
        )  # fmt: skip
        return job.result

    def skipped(self, job: FileJob) -> None:
        skip = job.file.skip
        assert skip is not None
        self._result(job, "skipped", skip.size, skip.sha256)
        self.log.emit("file_skipped", **self.fields(job, bytes=skip.size, total=skip.size,
                      reason=skip.reason))  # fmt: skip
        self.log.info("skip", f"{job.key}: {skip.reason}")
        self.status(job, "skipped", bytes=skip.size)

    def verified(self, job: FileJob, v: Verified, seconds: float, **extra: Any) -> None:
        self._result(job, "verified", v.size, v.sha256, seconds=seconds)
        self.log.emit(
            "file_verified",
            **self.fields(job, bytes=v.size, total=v.size, sha256=v.sha256,
                          downloaded=job.downloaded, seconds=round(seconds, 3), **extra),
        )  # fmt: skip
        how = f": hard link to {extra['linked_from']} (same URL)" if "linked_from" in extra else ""
        if "content_store" in extra:
            how = f": hard link to {extra['content_store']} (content store)"
        self.log.info("verified", f"{job.key} sha256={v.sha256}{how}")
        self.status(job, "verified", bytes=v.size)

    def fail(self, job: FileJob, exc: BaseException, seconds: float = 0.0) -> None:
        reason = _describe(exc)
        entry = job.file.entry
        self._result(job, "failed", 0, None, reason, seconds)
        level = "FAILED" if entry.required else "failed (optional, continuing)"
        self.log.emit("file_failed", **self.fields(job, error=reason, bytes=0,
                      total=job.file.size, required=entry.required,
                      kind=type(exc).__name__))  # fmt: skip
        self.log.error(job.key, f"{level}: {reason}", url=redact_url(entry.url),
                       error=type(exc).__name__, attempts=None)  # fmt: skip
        self.status(job, "failed", error=reason)

    async def record(self, v: Verified, job: FileJob) -> None:
        """Put ``v`` on record in verified.json (stat and fsync: off the loop)."""
        url = redact_url(job.file.entry.url)
        await asyncio.to_thread(self.state.record, v.path, v.sha256, url, v.stat)

    # --- local pass ---------------------------------------------------------------------

    async def local_pass(self) -> None:
        """Skip what is verified already; re-hash named files on disk that are not on record."""
        for file in self.plan.files:
            if file.skip is not None:
                self.skipped(self.job(file))
            elif file.refused is not None:
                self.fail(self.job(file), file.refused)
        for file in self.plan.to_recheck():
            await self.already_here(self.job(file), file.entry.sha256, file.entry.size)

    async def already_here(self, job: FileJob, sha256: str | None, size: int | None) -> bool:
        """Skip a named file that is on record, or on disk with the right sha256 (re-hashed
        in a thread, then put on record); True when skipped."""
        file = job.file
        if self.plan.skip_recorded(file, sha256):
            self.skipped(job)
            return True
        if not sha256 or file.dest is None:
            return False
        st = await asyncio.to_thread(_matches, file.dest, sha256, size)
        if st is None:
            return False
        self.plan.skip(file, sha256, st.st_size, "already present, sha256 checked")
        await self.record(Verified(file.dest, st.st_size, sha256, 0, st), job)
        self.skipped(job)
        return True

    # --- network ------------------------------------------------------------------------

    async def resolve(self, job: FileJob, url: str) -> RemoteFile:
        """Resolve ``url`` for ``job``; its requests are retried inside, under the one policy."""
        assert self.session is not None

        def on_retry(exc: BaseException, attempt: int, delay: float) -> None:
            self.log.emit("file_retry", **self.fields(job, attempt=attempt,
                          delay=round(delay, 3), reason=_describe(exc)))  # fmt: skip
            self.log.error(job.key, f"resolving, retry in {delay:.1f}s: {_describe(exc)}",
                           url=redact_url(url), attempt=attempt)  # fmt: skip

        policy = RetryPolicy.for_download(self.settings).with_on_retry(on_retry)
        notes: list[str] = []
        try:
            return await sources.resolve(
                self.session, job.file.entry, url, policy=policy, notes=notes
            )
        finally:
            for note in notes:
                if note not in self._warned:  # one line per host, not one per file
                    self._warned.add(note)
                    self.log.info("WARNING", note)

    async def prefetch(self, fetch: Fetch, sem: asyncio.Semaphore) -> None:
        """Resolve a fetch's URL once, ahead of the queue (names, sizes for the order)."""
        lead = self.job(fetch.files[0])
        async with sem:
            try:
                remote = await self.resolve(lead, fetch.url)
            except SourceError as exc:
                for f in fetch.files:
                    self.job(f).error = exc
                return
        for f in fetch.files:
            self.job(f).remote = remote
            if f.size is None:
                f.size = remote.size

    def claim_names(self, fetches: list[Fetch]) -> None:
        """Claim every resolved name in manifest order; a taken destination fails its entry."""
        names = {
            f.index: f.entry.filename or self.job(f).remote.filename  # type: ignore[union-attr]
            for fetch in fetches
            for f in fetch.files
            if f.entry.filename or self.job(f).remote is not None
        }
        for file in self.plan.claim_resolved(names):
            assert file.refused is not None
            self.fail(self.job(file), file.refused)

    async def run_fetch(self, fetch: Fetch) -> None:
        """Download a fetch's first deliverable entry (under the caps), then link the others."""
        members = [f for f in fetch.files if f.active]
        if not members:
            return
        lead = self.job(members[0])
        cap = _cap_key(fetch.url, self.settings.per_host)
        try:
            async with self.files_sem:
                if cap is not None:
                    async with self.host_sems[cap]:
                        await self._download(lead)
                else:
                    await self._download(lead)
        except Exception as exc:  # a bug in one file's path must not abort the others
            self.fail(lead, exc)
        for other in members[1:]:
            await self._link(self.job(other), lead)

    async def _download(self, job: FileJob) -> None:
        t0 = time.monotonic()
        entry = job.file.entry
        urls = [entry.url, *entry.mirrors]
        last: BaseException | None = None
        for i, url in enumerate(urls):
            if i > 0:
                self.log.info("mirror", f"for {job.key}: trying {redact_url(url)}")
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
            if verified is not None:
                shared = {"content_store": str(job.from_store)} if job.from_store else {}
                self.verified(job, verified, time.monotonic() - t0, **shared)
            return
        self.fail(job, last or DownloadError("no URL to download from"), time.monotonic() - t0)

    async def _fetch(
        self, job: FileJob, remote: RemoteFile, url: str, *, has_mirror: bool = False
    ) -> Verified | None:
        """Fetch ``remote`` into the job's destination; None when it turned out verified."""
        file = job.file
        dest = self.plan.claim(file, file.entry.filename or remote.filename)
        sha = file.entry.sha256 or (remote.sha256.lower() if remote.sha256 else None)
        # Now that the name is known, the file may be on record or on disk already.
        if await self.already_here(job, sha, file.entry.size or remote.size):
            return None

        async def transfer() -> Verified:
            return await self._transfer(job, remote, url, dest, has_mirror=has_mirror)

        if self.store is not None:
            return await self._through_store(job, remote, sha, transfer)
        return await transfer()

    async def _transfer(
        self, job: FileJob, remote: RemoteFile, url: str, dest: Path, *, has_mirror: bool
    ) -> Verified:
        """Download ``remote`` to ``dest``, verified, and put it on record."""
        file = job.file

        async def reresolve() -> RemoteFile:
            return await self.resolve(job, url)

        assert self.session is not None
        dl = FileDownload(
            self.session, file.entry, remote, dest, self.settings, FileReporter(self, job),
            reresolve, has_mirror=has_mirror,
        )  # fmt: skip
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
        await self.record(verified, job)
        return verified

    async def _through_store(
        self,
        job: FileJob,
        remote: RemoteFile,
        sha: str | None,
        transfer: Callable[[], Awaitable[Verified]],
    ) -> Verified:
        """Link the content from the store, or fetch it once for every root that shares it.

        The content's lock is held from the look-up to the store entry's creation: a second
        run on another root waits here, then finds the entry and links it.
        """
        store, file = self.store, job.file
        assert store is not None and file.dest is not None
        size = file.entry.size or remote.size
        async with store.hold(content_key(sha, file.entry.url)):
            known = sha or await asyncio.to_thread(
                store.sha256_for_url, file.entry.url, size, remote.etag
            )
            entry = await asyncio.to_thread(store.find, known, size) if known else None
            if entry is not None:
                st = await asyncio.to_thread(store.link_out, entry, file.dest)
                v = Verified(file.dest, entry.size, entry.sha256, 0, st)
                await self.record(v, job)
                job.from_store = entry.path
                return v
            v = await transfer()
            try:
                await asyncio.to_thread(
                    store.put, v.path, v.sha256, v.size, file.entry.url, remote.etag
                )
            except OSError as exc:  # the file is verified in this root; only sharing is lost
                self.log.error(job.key, f"not added to the content store: {exc}")
            return v

    async def _link(self, job: FileJob, leader: FileJob) -> None:
        """An entry with the leader's URL: a hard link to the leader's verified file."""
        lead = leader.result
        assert lead is not None
        file = job.file
        if lead.status == "failed":
            self.fail(job, DownloadError(f"same URL as {leader.key}, which failed: {lead.error}"))
            return
        try:
            dest = self.plan.claim(file, file.entry.filename or lead.filename)
        except (ComfyfleetError, ValueError) as exc:
            self.fail(job, exc)
            return
        if file.entry.sha256 and file.entry.sha256 != lead.sha256:
            differs = f"{dest.name}: the manifest's sha256 differs from {leader.key}'s, same URL"
            self.fail(job, DownloadError(differs))
            return
        try:
            st = await asyncio.to_thread(link_or_copy, lead.path, dest, lead.sha256)
        except (OSError, ComfyfleetError) as exc:
            self.fail(job, DownloadError(f"cannot link {lead.path} to {dest}: {exc}"))
            return
        v = Verified(dest, lead.bytes, lead.sha256 or "", 0, st)
        await self.record(v, job)
        self.verified(job, v, 0.0, linked_from=leader.key, linked_to=str(lead.path))

    async def run(self) -> None:
        self.queue_all()
        await self.local_pass()
        fetches = self.plan.fetches()
        if not fetches:
            return
        budget = self.settings.concurrency * self.settings.connections_per_file
        connector = aiohttp.TCPConnector(limit=budget + RESOLVE_PARALLEL, limit_per_host=0)
        async with aiohttp.ClientSession(
            connector=connector, timeout=session_timeout(), auto_decompress=False
        ) as session:
            self.session = session
            sem = asyncio.Semaphore(RESOLVE_PARALLEL)
            async with asyncio.TaskGroup() as tg:
                for fetch in fetches:
                    tg.create_task(self.prefetch(fetch, sem))
            self.claim_names(fetches)
            self.log.status.bytes_total = sum(j.file.size or 0 for j in self.jobs)
            async with asyncio.TaskGroup() as tg:
                for fetch in self.plan.order(fetches):
                    tg.create_task(self.run_fetch(fetch))


async def download_all(
    manifest: Manifest, root: Path, log: RunLog, *, content_store: Path | None = None
) -> DownloadReport:
    """Download and verify every model of ``manifest`` under ``root``.

    ``content_store``: a directory shared by several roots; a model found there (by sha256,
    re-checked) is hard-linked instead of fetched, and each fetched model is added to it.

    Emits the file_* events itself and never raises for one file's failure; ``report.ok`` is
    False iff a required file failed. Cancellation (Ctrl-C/SIGTERM) propagates after every
    part file's sidecar was saved: a re-run resumes, and no final file is half-written.
    Progress for people is the caller's: subscribe to ``log`` (see ``comfyfleet.progress``).
    """
    t0 = time.monotonic()
    log.set_phase("download")
    # Both stat every record and every destination: off the loop.
    state = await asyncio.to_thread(VerifiedState, root)
    plan = await asyncio.to_thread(DownloadPlan, manifest, Path(root), state.records)
    store = ContentStore(content_store) if content_store is not None else None
    run = DownloadRun(manifest, root, log, state, plan, store)
    await run.run()
    files = [j.result for j in run.jobs if j.result is not None]
    ok = all(f.status != "failed" or not f.required for f in files)
    report = DownloadReport(ok, files, run.downloaded, time.monotonic() - t0)
    log.info(
        "downloads",
        f"{report.count('verified')} verified, {report.count('skipped')} skipped, "
        f"{report.count('failed')} failed; {report.bytes} bytes in {report.seconds:.1f}s",
    )
    return report
