"""The verified parallel download engine (``comfyfleet download``).

Public API (imported lazily, PEP 562: the manifest's validators use :mod:`.plan` without
pulling in the HTTP stack)::

    await download_all(manifest, root, log) -> DownloadReport
    load_verified(root) -> dict[str, dict]     # ROOT/.comfyfleet/verified.json, still-valid records
    FileResult, DownloadReport

Modules: ``plan`` (what to fetch, where it lands, collisions, skips: no I/O), ``scheduler``
(the plan through the caps and a TaskGroup), ``engine`` (one file), ``transfer`` (one ranged
GET, stall detection), ``segments`` (range bookkeeping, work stealing), ``partfile``
(``NAME.part`` + sidecar), ``integrity`` (size, sha256, content), ``state`` (verified.json).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from comfyfleet.download.scheduler import DownloadReport, FileResult, download_all
    from comfyfleet.download.state import load_verified

_EXPORTS = {
    "DownloadReport": "comfyfleet.download.scheduler",
    "FileResult": "comfyfleet.download.scheduler",
    "download_all": "comfyfleet.download.scheduler",
    "load_verified": "comfyfleet.download.state",
}

__all__ = ["DownloadReport", "FileResult", "download_all", "load_verified"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
