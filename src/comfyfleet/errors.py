"""The one exception hierarchy of comfyfleet.

Every failure a user can meet is one of these classes; each carries the hint a person needs
to act on it (``hint``). Lower layers (aiohttp, asyncssh, git, pip, OS errors) are mapped
into it at their boundary, so a bare status code or a stack trace never reaches the user.
Messages never contain secrets: callers pass URLs through :func:`comfyfleet.redact.redact_url`.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path


class ComfyfleetError(Exception):
    """Base class: something went wrong that a person can understand and act on."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} — {self.hint}" if self.hint else self.message


# --- invocation and configuration (exit 2, nothing changed) ------------------------------


class UsageError(ComfyfleetError):
    """The command line or a config/manifest file is invalid; nothing was changed."""

    exit_code = 2


class ManifestError(UsageError):
    """The manifest does not parse or does not match the schema (field path in the message)."""


class RootUnusable(UsageError):
    """``--root`` is not a directory (or its state directory cannot be created)."""


class RootLocked(ComfyfleetError):
    """Another comfyfleet run holds the root's lock (``ROOT/.comfyfleet/lock``)."""


# --- remote sources ------------------------------------------------------------------------


class SourceError(ComfyfleetError):
    """A model source (Hugging Face, Civitai, a plain URL) refused or failed a request."""

    #: the `check` status this error maps to (DESIGN.md: check --json statuses)
    status: str = "server_error"
    #: whether retrying the same request later may succeed
    retryable: bool = False


class NotFound(SourceError):
    """The file, revision or repository does not exist (suggestions may say what does)."""

    status = "not_found"

    def __init__(self, message: str, *, hint: str = "", suggestions: list[str] | None = None):
        super().__init__(message, hint=hint)
        self.suggestions = suggestions or []


class GatedRepo(SourceError):
    """A gated Hugging Face repo: no token was sent (status gated_no_token)."""

    status = "gated_no_token"


class GatedNoAccess(GatedRepo):
    """A gated Hugging Face repo: a token was sent but its account has not accepted the licence."""

    status = "gated_no_access"


class TokenRequired(SourceError):
    """Civitai requires an API token (CIVITAI_TOKEN) for this file."""

    status = "civitai_token_required"


class AccessDenied(SourceError):
    """The server refused access for a reason a token does not fix (early access, blocked)."""

    status = "server_error"


class NotAModel(SourceError):
    """The server answered with an HTML/JSON page where a model file was expected."""

    status = "not_a_model"


class RateLimited(SourceError):
    """The server asked us to slow down (429); ``retry_after`` seconds when it said so."""

    status = "server_error"
    retryable = True

    def __init__(self, message: str, *, hint: str = "", retry_after: float | None = None):
        super().__init__(message, hint=hint)
        self.retry_after = retry_after


class ServerError(SourceError):
    """The server kept failing (5xx or an unexpected status) after bounded retries."""

    status = "server_error"
    retryable = True

    def __init__(self, message: str, *, hint: str = "", retry_after: float | None = None):
        super().__init__(message, hint=hint)
        self.retry_after = retry_after


class Unreachable(SourceError):
    """The host could not be reached (DNS, connection refused, TLS, timeout)."""

    status = "unreachable"
    retryable = True


class SignatureExpired(SourceError):
    """A resolved CDN URL answered 403/410: resolve the original URL again."""

    status = "server_error"
    retryable = True


# --- download integrity ------------------------------------------------------------------


class DownloadError(ComfyfleetError):
    """A file could not be downloaded and verified."""


class ChecksumMismatch(DownloadError):
    """The downloaded bytes do not hash to the expected sha256."""


class SizeMismatch(DownloadError):
    """The downloaded file is not the expected size (truncated or a different file)."""


class CorruptFile(DownloadError):
    """The content is not a valid model file (e.g. a safetensors header that does not parse)."""


class Stalled(DownloadError):
    """A connection stayed below ``min_speed`` for ``stall_timeout`` (retried elsewhere)."""


class DestinationTaken(DownloadError):
    """Two manifest entries resolved to one path; the later one is not downloaded."""


class DiskFull(DownloadError):
    """No space (or no quota) left on the device that holds a model folder or the run's state."""


# --- provisioning and runtime ------------------------------------------------------------


class CommandFailed(ComfyfleetError):
    """A subprocess (git, pip, install.py) exited non-zero; the message has its output tail."""

    def __init__(self, argv: list[str], returncode: int, output_tail: str, *, hint: str = ""):
        cmd = " ".join(argv)
        super().__init__(
            f"command failed (exit {returncode}): {cmd}\n{output_tail}".rstrip(), hint=hint
        )
        self.argv = argv
        self.returncode = returncode
        self.output_tail = output_tail


class InstallError(ComfyfleetError):
    """ComfyUI or a custom node could not be installed."""


class WorkflowError(ComfyfleetError):
    """A workflow needs something the manifest does not provide, or cannot be edited as asked."""


class NothingToImport(ComfyfleetError):
    """``import`` found no model and no custom node in its input (the hint names what it reads)."""


class ValidationFailed(ComfyfleetError):
    """Post-install verification failed (a requirement, or a warning under strict mode)."""


class RuntimeFailure(ComfyfleetError):
    """ComfyUI did not start, crashed, or is not ready by its own API."""


# --- remote log streaming ------------------------------------------------------------


class HostKeyError(ComfyfleetError):
    """The remote host key is unknown or changed; refused (never silently accepted)."""


class RemotePathError(UsageError):
    """The remote path to follow exists but is not a regular file (a directory, a fifo)."""


class Interrupted(ComfyfleetError):
    """Stopped by SIGINT/SIGTERM; the work done so far is kept and resumable."""

    exit_code = 130


# --- one place that says what a failure stands for --------------------------------------

#: errno values that mean "the disk (or the user's quota) is full"
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
#: how every disk-full verdict begins (scripts and the fleet may match it)
DISK_FULL_PREFIX = "disk full:"


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside ``exc`` with every (nested) exception group flattened, in order."""
    if not isinstance(exc, BaseExceptionGroup):
        return [exc]
    return [leaf for inner in exc.exceptions for leaf in leaves(inner)]


#: what git, pip and other subprocesses print when a write failed with ENOSPC or EDQUOT
_DISK_FULL_TEXTS = tuple(os.strerror(code).lower() for code in sorted(DISK_FULL_ERRNOS))


def _subprocess_disk_full(exc: BaseException) -> str | None:
    """What a failed command (maybe wrapped by the error that reported it) said when the disk
    was full: git or pip hit ENOSPC, so the verdict is the disk, not the command."""
    seen: BaseException | None = exc
    for _ in range(8):  # a short cause chain; never loop on a cycle
        if seen is None:
            return None
        if isinstance(seen, CommandFailed):
            output = seen.output_tail.lower()
            for text in _DISK_FULL_TEXTS:
                if text in output:
                    return text
        seen = seen.__cause__ or seen.__context__
    return None


def is_disk_full(exc: BaseException) -> bool:
    """True for :class:`DiskFull`, an OSError whose errno is ENOSPC or EDQUOT, or a command
    that failed saying so."""
    return (
        isinstance(exc, DiskFull)
        or (isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS)
        or _subprocess_disk_full(exc) is not None
    )


def first_error(exc: BaseException) -> BaseException:
    """The one exception a failure (a group, possibly nested) stands for.

    A full disk wins, since it is usually why the other tasks failed too; then the first leaf
    that is not a cancellation (a TaskGroup cancels the siblings of the task that failed).
    """
    import asyncio  # here, not at the top: `import comfyfleet.errors` stays cheap for the CLI

    found = leaves(exc)
    for leaf in found:
        if is_disk_full(leaf):
            return leaf
    for leaf in found:
        if not isinstance(leaf, asyncio.CancelledError):
            return leaf
    return found[0]


def _free_bytes(where: Path) -> int | None:
    import shutil

    for candidate in (where, *where.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def disk_full(exc: BaseException, where: Path) -> DiskFull | None:
    """The :class:`DiskFull` for an ENOSPC/EDQUOT OSError from writing under ``where``, else None.

    Its message is the one-line verdict ``disk full: N free under WHERE``.
    """
    if isinstance(exc, DiskFull):
        return exc
    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
        why = os.strerror(exc.errno).lower()  # "no space left on device", "disk quota exceeded"
    elif (said := _subprocess_disk_full(exc)) is not None:
        why = f"a command said: {said}"
    else:
        return None
    from comfyfleet.units import format_size

    free = _free_bytes(Path(where))
    amount = f"{format_size(free)} free" if free is not None else "no space left"
    return DiskFull(
        f"{DISK_FULL_PREFIX} {amount} under {where} ({why})",
        hint="free disk space or use a larger disk, then run again "
        "(verified files and completed ranges are kept)",
    )


@contextlib.contextmanager
def disk_errors(where: Path) -> Iterator[None]:
    """Inside this block, an ENOSPC/EDQUOT OSError from writing under ``where`` is a DiskFull."""
    try:
        yield
    except OSError as exc:
        full = disk_full(exc, where)
        if full is None:
            raise
        raise full from None


def known_error(exc: BaseException, where: Path | None = None) -> ComfyfleetError | None:
    """The comfyfleet error a failure stands for (groups flattened, a full disk mapped), or None.

    None means a bug: report it as :func:`internal_error` with its traceback kept in a file.
    """
    leaf = first_error(exc)
    full = disk_full(leaf, Path(where if where is not None else "."))
    if full is not None:
        return full
    return leaf if isinstance(leaf, ComfyfleetError) else None


def internal_error(exc: BaseException) -> str:
    """``internal error (<class>: <first line of the message>)`` for an unexpected exception."""
    leaf = first_error(exc)
    lines = str(leaf).strip().splitlines()
    detail = f"{type(leaf).__name__}: {lines[0]}" if lines else type(leaf).__name__
    return f"internal error ({detail})"


def one_line(exc: ComfyfleetError) -> str:
    """The first line of a comfyfleet error's message (the verdict; the rest goes to the logs).

    A first line that ends with ``:`` introduces a list (a manifest's or pool config's field
    errors, the models that would not download): then the list is the verdict, joined by
    ``; `` — "manifest.toml:" alone would tell nobody what to fix.
    """
    lines = [line.strip() for line in exc.message.strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if len(lines) > 1 and lines[0].endswith(":"):
        return f"{lines[0]} " + "; ".join(lines[1:])
    return lines[0]
