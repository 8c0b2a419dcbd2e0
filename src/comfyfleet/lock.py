"""One run at a time per root: an exclusive ``flock`` on ``ROOT/.comfyfleet/lock``.

Every command that may change ROOT (download, provision, start, stop) takes the lock before it
touches anything under ROOT, so a refused run changes no file. The kernel releases a flock when
the holder's last descriptor closes, so a run killed with ``kill -9`` never leaves a stale lock;
the descriptor is close-on-exec, so ComfyUI (or pip, or git) never inherits it. The file holds
the holder's ``{"pid", "command", "since"}`` for ``status`` and for the refusal message; the
kernel (``/proc/locks``), not that text, says whether it is held and by which process.

Within one process the lock is re-entrant: the CLI takes it (waiting if asked), and the
:class:`~comfyfleet.events.RunLog` the library opens under it takes it again without blocking.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from comfyfleet.errors import RootLocked, RootUnusable

#: the state directory under ROOT (re-exported by :mod:`comfyfleet.events`)
STATE_DIR = ".comfyfleet"
LOCK_FILE = "lock"
_POLL = 0.05


@dataclass(frozen=True)
class LockHolder:
    """The run that holds a root's lock."""

    pid: int
    command: str
    #: ISO-8601 UTC time the lock was taken ("" when the holder has not written it yet)
    since: str

    def to_json(self) -> dict[str, Any]:
        """``{"pid", "command", "since"}``."""
        return {"pid": self.pid, "command": self.command, "since": self.since}


def lock_path(root: Path) -> Path:
    """``ROOT/.comfyfleet/lock``."""
    return Path(root) / STATE_DIR / LOCK_FILE


# --- holding ---------------------------------------------------------------------------------

_guard = threading.Lock()
#: lock file (resolved) → [descriptor, hold count] for the locks this process holds
_held: dict[str, list[int]] = {}


class RootLock:
    """The exclusive lock on one root, held by this process while ``held``."""

    def __init__(self, root: Path, command: str) -> None:
        self.root = Path(root)
        self.command = command
        self.held = False
        self._key = ""

    def acquire(
        self,
        *,
        wait: bool = False,
        timeout: float | None = None,
        on_wait: Callable[[LockHolder | None], None] | None = None,
    ) -> None:
        """Take the lock; raise :class:`RootLocked` when another run holds it.

        ``wait``: block until it is free (``timeout`` seconds at most, None: for ever);
        ``on_wait(holder)`` is called once before waiting. Raises :class:`RootUnusable`
        (exit 2) when ROOT is a file or the lock cannot be created.
        """
        if self.held:
            return
        path = _prepare(self.root)
        key = os.path.realpath(path)
        with _guard:
            mine = _held.get(key)
            if mine is not None:  # re-entrant within this process
                mine[1] += 1
                self._key, self.held = key, True
                return
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise RootUnusable(
                f"cannot open {path}: {exc.strerror}",
                hint="--root must be a directory this user can write (the lock is a plain file)",
            ) from None
        try:
            if not _try_flock(fd):
                if not wait:
                    raise _refusal(self.root)
                if on_wait is not None:
                    on_wait(holder(self.root))
                if timeout is None:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                else:
                    deadline = time.monotonic() + timeout
                    while not _try_flock(fd):
                        if time.monotonic() > deadline:
                            raise _refusal(self.root)
                        time.sleep(_POLL)
            record = {"pid": os.getpid(), "command": self.command, "since": _now()}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        with _guard:
            _held[key] = [fd, 1]
        self._key, self.held = key, True

    def release(self) -> None:
        """Give the lock up (the last release in this process closes the descriptor)."""
        if not self.held:
            return
        self.held = False
        with _guard:
            entry = _held.get(self._key)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] > 0:
                return
            del _held[self._key]
        # the holder record stays: it names the last holder, and flock says nobody holds it
        os.close(entry[0])

    def __enter__(self) -> RootLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def hold_root(
    root: Path,
    command: str,
    *,
    wait: bool = False,
    on_wait: Callable[[LockHolder | None], None] | None = None,
) -> Iterator[RootLock]:
    """Hold ROOT's lock for the ``with`` block (see :meth:`RootLock.acquire`)."""
    lock = RootLock(root, command)
    lock.acquire(wait=wait, on_wait=on_wait)
    try:
        yield lock
    finally:
        lock.release()


def check_root(root: Path) -> None:
    """Raise :class:`RootUnusable` (exit 2) if ``root`` is, or lies under, something not a dir."""
    root = Path(root)
    for path in (root, *root.parents):
        if path.exists() and not path.is_dir():
            what = "--root" if path == root else f"--root {root}: {path}"
            raise RootUnusable(
                f"{what} is not a directory",
                hint="pass a directory (it is created when missing); nothing was changed",
            )
        if path.exists():
            return


def _prepare(root: Path) -> Path:
    check_root(root)
    path = lock_path(root)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise RootUnusable(
            f"{path.parent} is not a directory", hint="move the file aside; nothing was changed"
        ) from None
    except PermissionError as exc:
        raise RootUnusable(f"cannot create {exc.filename}: permission denied") from None
    return path


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:  # EWOULDBLOCK on some systems
        if exc.errno in {errno.EAGAIN, errno.EWOULDBLOCK}:
            return False
        raise
    return True


def _refusal(root: Path) -> RootLocked:
    who = holder(root)
    pid = f"pid {who.pid}" if who is not None else "pid unknown"
    doing = f", {who.command} since {who.since}" if who is not None and who.since else ""
    return RootLocked(
        f"another comfyfleet run ({pid}{doing}) holds {root}",
        hint="wait for it (pass --wait-lock), or stop it with `comfyfleet stop --root "
        f"{root}`; nothing was changed",
    )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# --- reading (status, stop): never takes the lock ---------------------------------------------


def holder(root: Path) -> LockHolder | None:
    """The run holding ROOT's lock now, or None (read-only: takes no lock, changes nothing)."""
    path = lock_path(root)
    try:
        inode = os.stat(path, follow_symlinks=False).st_ino
    except OSError:
        return None
    pids = flock_pids(inode)
    record = _read_record(path)
    if pids is None:  # no /proc/locks: the record and a live pid are all we have
        if record is not None and _alive(record.pid):
            return record
        return None
    if not pids:
        return None
    if record is not None and record.pid in pids:
        return record
    return LockHolder(pids[0], "unknown", "")


def flock_pids(inode: int) -> list[int] | None:
    """Pids holding a FLOCK on ``inode`` per ``/proc/locks`` (None when that file is absent)."""
    try:
        text = Path("/proc/locks").read_text()
    except OSError:
        return None
    pids = []
    for line in text.splitlines():
        # "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"; waiters carry "->" after the id
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK":
            continue
        with contextlib.suppress(ValueError, IndexError):
            if int(fields[5].rsplit(":", 1)[1]) == inode:
                pids.append(int(fields[4]))
    return pids


def holds_file(pid: int, path: Path) -> bool:
    """True if process ``pid`` has ``path`` open (``/proc/<pid>/fd``): proof before a signal."""
    target = os.path.realpath(path)
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                return True
    return False


def _read_record(path: Path) -> LockHolder | None:
    try:
        doc = json.loads(path.read_text())
        pid, command, since = doc["pid"], doc["command"], doc["since"]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if not (isinstance(pid, int) and pid > 0 and isinstance(command, str)):
        return None
    return LockHolder(pid, command, since if isinstance(since, str) else "")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- stopping the holder ---------------------------------------------------------------------


def stop_holder(root: Path, lock: RootLock, *, grace: float) -> LockHolder | None:
    """SIGTERM the run holding ROOT's lock, wait up to ``grace`` s for it, then take the lock.

    The holder ends as an interrupted run (its marker and sentinel say so). Only a process the
    kernel names as the holder *and* that has the lock file open is signalled; one that does
    not end in time gets SIGKILL (the kernel then frees the lock). Returns who was stopped.
    """
    try:
        lock.acquire()
        return None
    except RootLocked:
        pass
    who = holder(root)
    if who is None or not holds_file(who.pid, lock_path(root)):
        lock.acquire(wait=True, timeout=grace)  # it is ending by itself, or we cannot know
        return who
    with contextlib.suppress(ProcessLookupError):
        os.kill(who.pid, signal.SIGTERM)
    try:
        lock.acquire(wait=True, timeout=grace)
    except RootLocked:
        if holds_file(who.pid, lock_path(root)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(who.pid, signal.SIGKILL)
        lock.acquire(wait=True, timeout=10.0)
    return who
