"""One element of a model array, in each style published scripts use.

- a bare URL (ai-dock): where it lands comes from the array (its name, or the call that
  downloads it);
- ``"URL|DEST_PATH"`` (Vast's current scripts; white space around ``|`` is ignored, so a line
  break inside the quotes is fine);
- ``"URL:SUBDIR:FILENAME"``, split from the right so ``https:`` and ``:8443`` stay in the URL,
  and ``"URL:FILENAME"`` when the last part names a model file;
- ``["URL"]="filename"`` (associative arrays; a value with ``/`` is a destination path).
"""

from __future__ import annotations

from dataclasses import dataclass

from comfyfleet.importers.folders import looks_like_file


@dataclass(frozen=True)
class Element:
    """What an element says: its URL and, when it says so, where the file lands."""

    url: str
    dest: str | None = None  # a path (a directory when it ends with "/")
    rel: str | None = None  # SUBDIR of URL:SUBDIR:FILENAME, relative to models/
    filename: str | None = None

    @classmethod
    def of_value(cls, value: str) -> Element:
        """Read a plain array element (already expanded)."""
        if "|" in value:
            url, dest = (p.strip() for p in value.split("|", 1))
            return cls(url, dest=dest)
        url = value.strip()
        parts = url.rsplit(":", 2)
        if len(parts) == 3 and "://" in parts[0] and "/" not in parts[2] and parts[2]:
            return cls(parts[0], rel=parts[1], filename=parts[2])
        head, _, tail = url.rpartition(":")
        if "://" in head and "/" not in tail and looks_like_file(tail):
            return cls(head, filename=tail)
        return cls(url)

    @classmethod
    def of_pair(cls, key: str, value: str) -> Element:
        """Read an associative element ``[key]=value`` (both already expanded)."""
        value = value.strip()
        if "/" in value:
            return cls(key.strip(), dest=value)
        return cls(key.strip(), filename=value or None)
