"""Human sizes (``100MiB``) and durations (``15m``, ``1h30m``) for manifests and flags."""

from __future__ import annotations

import math
import re

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")


def parse_size(value: str | int | float) -> int:
    """Bytes from ``1234``, ``"256KiB"``, ``"1.5GB"`` (SI and binary units, case-insensitive)."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 256KiB or 100MiB, got a boolean")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"a size must be a finite number of bytes, got {value}")
        if value < 0:
            raise ValueError("a size cannot be negative")
        return int(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a size such as 256KiB or 100MiB, got {type(value).__name__}")
    match = _SIZE.match(value)
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(
            f"invalid size {value!r}: use a number with an optional unit "
            "(B, KB, MB, GB, KiB, MiB, GiB), e.g. 256KiB"
        )
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def parse_duration(value: str | int | float) -> float:
    """Seconds from ``90``, ``"60s"``, ``"15m"``, ``"1h30m"``, ``"250ms"``."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 60s or 15m, got a boolean")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"a duration must be a finite number of seconds, got {value}")
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a duration such as 60s or 15m, got {type(value).__name__}")
    text = value.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    if not text or _DURATION_PART.sub("", text).strip():
        raise ValueError(
            f"invalid duration {value!r}: use a number with a unit (ms, s, m, h, d), "
            "e.g. 60s, 15m or 1h30m"
        )
    return sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text))


def format_size(n: float) -> str:
    """``1.5 GiB``-style text for a byte count."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def format_duration(seconds: float) -> str:
    """``1h02m``, ``3m05s`` or ``4.2s`` for a number of seconds."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
