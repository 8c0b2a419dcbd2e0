"""Traceback files: an unexpected failure's stack goes to a file, so the terminal gets one line.

A run with a root keeps them under ``ROOT/.comfyfleet/``; commands without one (``check``,
``logs follow``, ``import``) use the system temp dir. They are redacted like every other output:
an aiohttp error's text may embed a URL with a token in it.
"""

from __future__ import annotations

import os
import tempfile
import traceback
from datetime import UTC, datetime
from pathlib import Path

from comfyfleet.redact import redact_text


def _create(directory: Path, prefix: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{os.getpid()}"
    for n in range(100):
        path = directory / f"{prefix}{stamp}{f'-{n}' if n else ''}.txt"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
        except OSError:
            path.unlink(missing_ok=True)  # a half-written file would look like the whole story
            raise
        return path
    raise FileExistsError(f"no free traceback file name under {directory}")


def save_traceback(exc: BaseException, directory: Path | None = None) -> Path | None:
    """Write ``exc``'s traceback, redacted, to a new file under ``directory`` (else the temp dir).

    Returns its path, or None when neither place can be written (a full disk, for one).
    """
    text = redact_text("".join(traceback.format_exception(exc)))
    places: list[tuple[Path, str]] = []
    if directory is not None:
        places.append((Path(directory), "traceback-"))
    places.append((Path(tempfile.gettempdir()), "comfyfleet-traceback-"))
    for where, prefix in places:
        try:
            return _create(where, prefix, text)
        except OSError:
            continue
    return None
