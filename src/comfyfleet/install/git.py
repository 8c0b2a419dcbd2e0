"""Put a git checkout at a ref without clobbering anyone's work.

A checkout is always driven the same way — ``git init`` (if needed) + ``fetch`` + detached
``checkout`` of the resolved commit — so it also works when the directory already holds files
(models downloaded into ``ComfyUI/models/`` while ComfyUI is still being fetched). A checkout
with local changes to tracked files, or with commits that are on no remote ref, is reported and
left alone (ai-dock/comfyui #8: ``git pull`` over a dirty tree). A second run at a pinned
commit (full or abbreviated) or tag that is already checked out touches nothing, not even the
network; only a branch (or no ref: the default branch) is fetched again to see where it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from comfyfleet.errors import CommandFailed, InstallError
from comfyfleet.events import RunLog
from comfyfleet.install.process import run_command
from comfyfleet.redact import redact_url

_FULL_SHA = re.compile(r"^[0-9a-f]{40}$")
#: a commit id as people pin it: full, or abbreviated to at least git's default 7 digits
_COMMIT_ID = re.compile(r"^[0-9a-fA-F]{7,40}$")


@dataclass
class Checkout:
    """The result of :func:`ensure_checkout`."""

    path: Path
    commit: str
    #: ``cloned`` (new), ``updated`` (moved to another commit), ``unchanged``
    action: str
    #: a non-fatal remark, e.g. local changes kept at the right commit
    warning: str = ""


async def git(
    *args: str, cwd: Path, log: RunLog | None, source: str, timeout: float = 600.0
) -> str:
    """Run ``git -C cwd ARGS`` and return its stripped output."""
    out = await run_command(["git", "-C", str(cwd), *args], log=log, source=source, timeout=timeout)
    return out.strip()


async def _try(*args: str, cwd: Path) -> str | None:
    try:
        return await git(*args, cwd=cwd, log=None, source="git")
    except CommandFailed:
        return None


async def head_commit(path: Path) -> str | None:
    """The commit checked out at ``path``, or None if it is not a git checkout."""
    if not (path / ".git").exists():
        return None
    return await _try("rev-parse", "HEAD", cwd=path)


async def resolve_local(path: Path, ref: str | None) -> str | None:
    """The commit ``ref`` names in the local repository (remote branch first), or None."""
    if not ref:
        return await _try(
            "rev-parse", "--verify", "-q", "refs/remotes/origin/HEAD^{commit}", cwd=path
        )
    for candidate in (f"refs/remotes/origin/{ref}", f"refs/tags/{ref}", ref):
        found = await _try("rev-parse", "--verify", "-q", f"{candidate}^{{commit}}", cwd=path)
        if found:
            return found
    return None


async def pinned_commit(path: Path, ref: str) -> str | None:
    """The commit a pinned ``ref`` names in the local repository: a tag, or a commit id (full
    or abbreviated). None for a branch (it moves: only a fetch tells where) or an unknown ref."""
    if await _try("rev-parse", "--verify", "-q", f"refs/remotes/origin/{ref}^{{commit}}", cwd=path):
        return None
    tag = await _try("rev-parse", "--verify", "-q", f"refs/tags/{ref}^{{commit}}", cwd=path)
    if tag:
        return tag
    if _COMMIT_ID.match(ref):
        found = await _try("rev-parse", "--verify", "-q", f"{ref}^{{commit}}", cwd=path)
        if found and found.startswith(ref.lower()):
            return found
    return None


async def ensure_checkout(
    repo: str, ref: str | None, dest: Path, *, log: RunLog, source: str
) -> Checkout:
    """Make ``dest`` a checkout of ``repo`` at ``ref`` (a tag, branch or commit; None: default).

    Raises :class:`InstallError` for a dirty or diverged checkout that would have to move,
    a ref that does not exist, or a repository that cannot be fetched.
    """
    shown = redact_url(repo)
    is_new = not (dest / ".git").exists()
    current = None if is_new else await head_commit(dest)

    # Fast path: a pinned ref already checked out needs nothing, not even the network.
    if current and ref and not is_new and await pinned_commit(dest, ref) == current:
        return Checkout(dest, current, "unchanged", await _dirty_warning(dest))

    dest.mkdir(parents=True, exist_ok=True)
    try:
        if is_new:
            await git("init", "-q", cwd=dest, log=log, source=source)
            await git("remote", "add", "origin", repo, cwd=dest, log=log, source=source)
        else:
            await git("remote", "set-url", "origin", repo, cwd=dest, log=log, source=source)
        await git(
            "fetch", "--quiet", "--tags", "--force", "origin",
            "+refs/heads/*:refs/remotes/origin/*", cwd=dest, log=log, source=source,
        )  # fmt: skip
        if not ref:
            await git("remote", "set-head", "origin", "--auto", cwd=dest, log=log, source=source)
    except CommandFailed as exc:
        raise InstallError(
            f"{source}: cannot fetch {shown}: {exc.output_tail.strip()[-500:]}",
            hint="check the repo URL and that this machine can reach it",
        ) from None
    target = await resolve_local(dest, ref)
    if target is None and ref and _FULL_SHA.match(ref):
        # A commit that no branch or tag points at: fetch it by id (GitHub/GitLab allow this).
        await _try("fetch", "--quiet", "origin", ref, cwd=dest)
        target = await resolve_local(dest, ref)
    if target is None:
        raise InstallError(
            f"{source}: ref {ref or '(default branch)'!r} not found in {shown}",
            hint="use an existing tag, branch or commit of that repository",
        )
    if current == target:
        return Checkout(dest, current, "unchanged", await _dirty_warning(dest))
    if current is not None:
        dirty = await _dirty_files(dest)
        if dirty:
            raise InstallError(
                f"{source}: {dest} has local changes ({', '.join(dirty[:5])}); "
                f"not moving it from {current[:12]} to {target[:12]}",
                hint="commit, stash or discard the changes (or delete the directory) and re-run",
            )
        local_only = await _try(
            "rev-list", "--max-count=5", "HEAD", "--not", "--remotes", "--tags", cwd=dest
        )
        if local_only:
            raise InstallError(
                f"{source}: {dest} is at {current[:12]}, which carries commits that are on no "
                f"remote branch; not moving it to {target[:12]}",
                hint="push or save those commits (or delete the directory) and re-run",
            )
    try:
        await git("checkout", "--quiet", "--detach", target, cwd=dest, log=log, source=source)
    except CommandFailed as exc:
        raise InstallError(
            f"{source}: cannot check out {target[:12]} in {dest}: {exc.output_tail.strip()[-500:]}",
            hint="files in the way are kept; move them aside and re-run",
        ) from None
    return Checkout(dest, target, "cloned" if is_new else "updated")


async def _dirty_files(path: Path) -> list[str]:
    out = await _try("status", "--porcelain", "--untracked-files=no", cwd=path)
    # porcelain lines are "XY path"; _try strips the first line's leading space
    return [line.split(maxsplit=1)[-1] for line in (out or "").splitlines() if line.strip()]


async def _dirty_warning(path: Path) -> str:
    dirty = await _dirty_files(path)
    return f"local changes kept: {', '.join(dirty[:5])}" if dirty else ""
