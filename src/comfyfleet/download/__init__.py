"""The verified parallel download engine (``comfyfleet download``).

Public API::

    await download_all(manifest, root, log, progress=None) -> DownloadReport
    load_verified(root) -> dict[str, dict]     # ROOT/.comfyfleet/verified.json, still-valid records
    FileResult, DownloadReport

Modules: ``segments`` (range bookkeeping, work stealing), ``partfile`` (``NAME.part`` +
sidecar), ``transfer`` (one ranged GET, stall detection, retry policy), ``verify`` (size,
sha256, content), ``state`` (verified.json), ``engine`` (one file), ``scheduler`` (the queue).
"""

from __future__ import annotations

from comfyfleet.download.scheduler import DownloadReport, FileResult, download_all
from comfyfleet.download.state import load_verified

__all__ = ["DownloadReport", "FileResult", "download_all", "load_verified"]
