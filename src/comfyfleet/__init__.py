"""comfyfleet: rented GPU machines from bare to a verified, running ComfyUI — and a warm pool.

The public API (what the fleet and users' scripts may import; everything else is internal)::

    from comfyfleet import load_manifest, check, download_all, provision, verify, follow

Names are loaded on first use (PEP 562), so ``import comfyfleet`` — and with it every CLI
start-up — costs nothing until a name is touched.
"""

# ruff: noqa: F401  (the TYPE_CHECKING imports exist for type checkers only)
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> (module, attribute)
_PUBLIC: dict[str, tuple[str, str]] = {
    # manifest
    "load_manifest": ("comfyfleet.manifest", "load_manifest"),
    "parse_manifest": ("comfyfleet.manifest", "parse_manifest"),
    "Manifest": ("comfyfleet.manifest", "Manifest"),
    "ModelEntry": ("comfyfleet.manifest", "ModelEntry"),
    "NodeEntry": ("comfyfleet.manifest", "NodeEntry"),
    # preflight
    "check": ("comfyfleet.preflight", "check_manifest"),
    "CheckReport": ("comfyfleet.preflight", "CheckReport"),
    "EntryResult": ("comfyfleet.preflight", "EntryResult"),
    # downloads
    "download_all": ("comfyfleet.download", "download_all"),
    "DownloadReport": ("comfyfleet.download", "DownloadReport"),
    "FileResult": ("comfyfleet.download", "FileResult"),
    # provisioning, verification
    "provision": ("comfyfleet.provisioning", "provision"),
    "ProvisionReport": ("comfyfleet.provisioning", "ProvisionReport"),
    "verify": ("comfyfleet.verification", "verify"),
    "VerifyReport": ("comfyfleet.verification", "VerifyReport"),
    # the run record under ROOT/.comfyfleet
    "RunLog": ("comfyfleet.events", "RunLog"),
    "EVENT_NAMES": ("comfyfleet.events", "EVENT_NAMES"),
    # one run at a time per root (ROOT/.comfyfleet/lock)
    "RootLock": ("comfyfleet.lock", "RootLock"),
    "lock_holder": ("comfyfleet.lock", "holder"),
    # remote logs
    "follow": ("comfyfleet.logstream", "follow"),
    "FollowTarget": ("comfyfleet.logstream", "FollowTarget"),
    "FollowOptions": ("comfyfleet.logstream", "FollowOptions"),
    "FollowResult": ("comfyfleet.logstream", "FollowResult"),
    "SshTarget": ("comfyfleet.logstream", "SshTarget"),
    "MarkerSet": ("comfyfleet.logstream", "MarkerSet"),
    # redaction
    "redact_text": ("comfyfleet.redact", "redact_text"),
    "redact_url": ("comfyfleet.redact", "redact_url"),
}
_ERRORS = [
    "ComfyfleetError",
    "UsageError",
    "ManifestError",
    "RootUnusable",
    "RootLocked",
    "SourceError",
    "NotFound",
    "GatedRepo",
    "GatedNoAccess",
    "TokenRequired",
    "AccessDenied",
    "NotAModel",
    "RateLimited",
    "ServerError",
    "Unreachable",
    "SignatureExpired",
    "DownloadError",
    "ChecksumMismatch",
    "SizeMismatch",
    "CorruptFile",
    "Stalled",
    "DiskFull",
    "CommandFailed",
    "InstallError",
    "WorkflowError",
    "ValidationFailed",
    "RuntimeFailure",
    "HostKeyError",
    "Interrupted",
]
_PUBLIC.update({name: ("comfyfleet.errors", name) for name in _ERRORS})

__all__ = sorted([*_PUBLIC, "__version__"])


def __getattr__(name: str) -> Any:
    try:
        module, attr = _PUBLIC[name]
    except KeyError:
        raise AttributeError(f"module 'comfyfleet' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only (the errors resolve lazily)
    from comfyfleet.download import DownloadReport, FileResult, download_all
    from comfyfleet.events import EVENT_NAMES, RunLog
    from comfyfleet.lock import RootLock
    from comfyfleet.lock import holder as lock_holder
    from comfyfleet.logstream import (
        FollowOptions,
        FollowResult,
        FollowTarget,
        MarkerSet,
        SshTarget,
        follow,
    )
    from comfyfleet.manifest import Manifest, ModelEntry, NodeEntry, load_manifest, parse_manifest
    from comfyfleet.preflight import CheckReport, EntryResult
    from comfyfleet.preflight import check_manifest as check
    from comfyfleet.provisioning import ProvisionReport, provision
    from comfyfleet.redact import redact_text, redact_url
    from comfyfleet.verification import VerifyReport, verify
