"""URLs as scripts and workflows write them, made fit for a manifest (exactly, minus tokens)."""

from __future__ import annotations

import re

from comfyfleet.importers.folders import UNRESOLVED

_TOKEN_VAR = {"huggingface.co": "HF_TOKEN", "hf.co": "HF_TOKEN"}


def clean_url(url: str) -> tuple[str | None, list[str]]:
    """A manifest-ready URL and notes, or None and why it cannot be used as is.

    The query is kept exactly as written (``?download`` stays ``?download``), except that a
    ``token=`` parameter is removed: tokens come from the environment.
    """
    url = url.strip()
    if UNRESOLVED in url:
        names = re.findall(rf"{UNRESOLVED}([^{UNRESOLVED}]*){UNRESOLVED}", url)
        return None, [f"uses ${names[0] if names else '?'}, which the importer cannot resolve"]
    if not re.match(r"^https?://[^/\s]+", url):
        return None, ["not an http(s) URL"]
    if re.search(r"[\s\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]", url):
        return None, ["the URL contains white space or control characters"]
    notes: list[str] = []
    base, qmark, rest = url.partition("?")
    query, hmark, fragment = rest.partition("#")
    params = query.split("&") if query else []
    kept = [p for p in params if p.split("=", 1)[0].lower() != "token"]
    host = base.split("/")[2].lower() if base.count("/") >= 2 else ""
    if len(kept) != len(params):
        var = _TOKEN_VAR.get(host, "CIVITAI_TOKEN")
        notes.append(f"token removed from the URL: set {var} in the environment instead")
    if host in ("huggingface.co", "hf.co") and "/blob/" in base:
        base = base.replace("/blob/", "/resolve/", 1)
        notes.append("/blob/ (the web page) changed to /resolve/ (the file)")
    if host in ("civitai.com", "www.civitai.com") and base.split(host, 1)[1].startswith("/models/"):
        return None, ["a Civitai model page, not a download URL (/api/download/models/<versionId>)"]
    out = base + (("?" + "&".join(kept)) if kept else ("?" if qmark and not params else ""))
    return out + (hmark + fragment if hmark else ""), notes
