"""The SSH edge: connect with keepalive and host-key pinning, and run one remote read session.

The remote side is a POSIX ``sh`` loop over GNU coreutils (``stat``, ``dd``, ``head``,
``sleep``, ``find``, ``timeout``); no Python is assumed on the machine. It keeps the log
open as fd 3, so a renamed file is still read to its end (the drain), and writes framed
records on stdout:

====================  ==================================================================
``W``                  the path does not exist yet; still waiting
``K [size h]`` + h B   heartbeat once a second when idle, re-checking size and first h bytes
``O dev ino size m h`` opened: identity, size, mode, then the first h (= ``head_len``) bytes
``D n`` + n bytes      data at the current offset
``V size h`` + h B     re-check after each ``D``: size, then the first h bytes
``R [1]``              ours is drained and the path names another file, which has data
                       (or ours has been idle for the rotation wait); with ``1`` an ``O``
                       of the new file follows in this session, else the session ends
``N type``             the path exists but is not a regular file (``stat %F``)
``T size 1``           the open file shrank below our offset; reading goes on from 0
``G``                  the expected inode is gone (not at the path, not in its directory)
====================  ==================================================================

Why not ``tail -f``: after a truncation it silently starts again from 0, so received bytes
stop matching offsets (reference/logstream.md §1.3, §4.4). How the reader dies with its
connection: without a PTY the remote command is not sent SIGHUP when the client vanishes
(§3.6), so a background ``cat`` blocked on the channel's stdin kills the loop when that
closes; should it fail, the next one-second heartbeat dies of SIGPIPE, and an outer
``timeout`` bounds the session whatever happens.
"""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path

import asyncssh
from asyncssh.public_key import get_default_public_key_algs

from comfyfleet.errors import HostKeyError
from comfyfleet.logstream.core import (
    HEAD_BYTES,
    Checked,
    Chunk,
    Event,
    Gone,
    Opened,
    Rotated,
    SessionRequest,
    Truncated,
)

#: seconds between keepalives; 3 unanswered ones close the connection (off by default in
#: asyncssh: without it a read can hang forever after a network cut, ronf/asyncssh#321)
KEEPALIVE_INTERVAL = 5.0
KEEPALIVE_COUNT_MAX = 3

_SCRIPT = r"""
export LC_ALL=C
exec 2>/dev/null
printf '%s\n' "$0"  # start of the records: whatever a login script printed comes before it
f=$1 off=$2 edev=$3 eino=$4 hl=$5 poll=$6 rw=$7 max=$8 K=$9 hbn=${10} slow=${11} sw=${12}
exec 4>&1
# The channel's stdin closes when the client closes the channel or the connection dies
# (sshd sends no SIGHUP without a PTY, and OpenSSH ignores "signal" requests here): a
# watcher blocked on it ends the loop at once. It lets go of stdout so EOF still flows.
# (A background job's stdin is /dev/null unless redirected explicitly, hence fd 5.)
exec 5<&0
( exec 1>/dev/null 3<&- 4>&-; cat <&5; kill -TERM $$ ) &
exec 5<&-
watcher=$!
trap 'kill "$watcher" 2>/dev/null' EXIT
trap 'exit 0' TERM
# emit OFFSET N: exactly N bytes of fd 3 from OFFSET. conv=sync pads a short read (the file
# shrank meanwhile) so the frame keeps its length; an empty read yields no block at all,
# hence the explicit padding. The re-check that follows tells the client not to trust them.
emit() {
  [ "$2" -gt 0 ] || return 0
  r=$(dd if=/dev/fd/3 bs="$2" count=1 skip="$1" iflag=skip_bytes,fullblock conv=sync 2>&1 >&4)
  case $r in "0+0 "*) head -c "$2" /dev/zero;; esac
}
head_len() { h=$off; [ "$h" -gt "$K" ] && h=$K; }
# Poll every $poll seconds while the log is busy; after a quiet heartbeat period, every $slow
# seconds ($sw polls' worth): each poll costs the remote machine a stat and a sleep process.
w=1 nap=$poll ticks=0 fd=
beat() {
  ticks=$((ticks + w))
  [ "$ticks" -ge "$hbn" ] || return 0
  ticks=0
  if [ -z "$fd" ]; then printf 'K\n'; return 0; fi
  head_len; printf 'K %s %s\n' "$size" "$h"; emit 0 "$h"
}
if [ -z "$eino" ]; then
  waited=0 w=$sw
  while [ ! -r "$f" ]; do
    [ "$waited" = 0 ] && printf 'W\n'; waited=1
    beat; sleep "$slow"
  done
  w=1
  # A directory opens fine and then reads as nothing: refuse anything but a regular file.
  if [ ! -f "$f" ]; then printf 'N %s\n' "$(stat -L -c %F -- "$f")"; exit 0; fi
  exec 3<"$f"
  mode=new
else
  p=$(stat -L -c '%d %i' -- "$f")
  if [ "$p" = "$edev $eino" ]; then
    exec 3<"$f"; mode=same
  else
    o=$(find "$(dirname -- "$f")" -maxdepth 1 -inum "$eino" -print -quit)
    if [ -z "$o" ]; then printf 'G\n'; exit 0; fi
    exec 3<"$o"; mode=old
  fi
fi
set -- $(stat -L -c '%d %i %s' /dev/fd/3)
printf 'O %s %s %s %s %s\n' "$1" "$2" "$3" "$mode" "$hl"; emit 0 "$hl"
fd=3 idle=0 check=0
while :; do
  # One stat per poll serves both the re-check of the chunk just sent and what to do next.
  # The path comes first: once its new file has data, a single sequential writer has
  # finished with the old one, so the old size read after it is final. A missing path
  # leaves only the three fields of fd 3.
  set -- $(stat -L -c '%d %i %s' -- "$f" /dev/fd/3)
  if [ $# -ge 6 ]; then pid="$1 $2" psize=$3 size=$6 fid="$4 $5"
  else pid= psize=0 size=$3 fid="$1 $2"; fi
  if [ "$check" = 1 ]; then
    head_len; printf 'V %s %s\n' "$size" "$h"; emit 0 "$h"; check=0
  fi
  if [ "$size" -lt "$off" ]; then
    # Same inode, new content: go on from 0 in this session (a new one costs a channel,
    # a shell and a few processes, which is most of a rotation's delay).
    printf 'T %s 1\n' "$size"; off=0 check=0 idle=0 w=1 nap=$poll
    continue
  fi
  if [ "$size" -gt "$off" ]; then
    n=$((size - off)); [ "$n" -gt "$max" ] && n=$max
    printf 'D %s\n' "$n"; emit "$off" "$n"
    off=$((off + n)) check=1 idle=0 w=1 nap=$poll
    continue
  fi
  # Drained (size = off here). The path names another file: switch at once when that file
  # has data; while it is absent or empty the old one may still get late lines, so wait
  # for $rw quiet polls (logrotate's `create` makes the new file before the daemon reopens).
  if [ "$pid" != "$fid" ] && { [ "$psize" -gt 0 ] || [ "$idle" -ge "$rw" ]; }; then
    ticks=$hbn; beat  # a last re-check: a same-size rewrite must not pass for drained
    if [ ! -f "$f" ]; then printf 'R\n'; exit 0; fi  # absent: the next session waits
    # Switch in this session: open whatever the path names now and say what it is.
    printf 'R 1\n'
    exec 3<"$f"
    set -- $(stat -L -c '%d %i %s' /dev/fd/3)
    printf 'O %s %s %s new 0\n' "$1" "$2" "$3"
    off=0 check=0 idle=0 w=1 nap=$poll
    continue
  fi
  idle=$((idle + w))
  [ "$idle" -ge "$hbn" ] && w=$sw nap=$slow
  beat
  sleep "$nap"
done
"""


@dataclass(frozen=True)
class SshTarget:
    """How to reach one machine."""

    host: str
    port: int = 22
    user: str = "root"
    key: Path | None = None
    known_hosts: Path | None = None
    accept_new_host_key: bool = False
    #: the one key to accept ("ssh-ed25519 AAAA…"), pinned by the caller (the fleet pins
    #: per instance id); the known-hosts file is then neither read nor written
    host_key: str | None = None

    @property
    def known_hosts_path(self) -> Path:
        """The known-hosts file checked (and, with accept_new_host_key, appended to)."""
        return self.known_hosts or Path.home() / ".ssh" / "known_hosts"

    @property
    def label(self) -> str:
        """``user@host:port`` for messages (no secrets in it)."""
        return f"{self.user}@{self.host}:{self.port}"


@dataclass(frozen=True)
class ReadTuning:
    """Remote loop timing: poll interval (busy, and after a second of quiet), rotation drain
    wait, chunk cap, session bound, heartbeat, and how long silence means a dead link."""

    poll: float = 0.05
    idle_poll: float = 0.2
    rotate_wait: float = 1.0
    max_chunk: int = 4 * 1024 * 1024
    session_seconds: int = 300
    heartbeat: float = 1.0
    stall: float = 15.0


#: the reader's $0; also its first output line, which marks where its records begin
_SYNC = b"comfyfleet-logstream"


class ConnectionLost(Exception):
    """The connection or the remote reader failed in a way a reconnect may fix."""


class NotRegularFile(Exception):
    """The path exists but is not a regular file; ``kind`` is what ``stat`` calls it."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class _SessionEnded(Exception):
    """The remote reader's output ended inside a record."""


def remote_command(path: str, req: SessionRequest, tuning: ReadTuning) -> str:
    """The shell command line for one bounded read session."""
    ticks = max(1, round(tuning.heartbeat / tuning.poll))
    args = [
        path,
        str(req.offset),
        "" if req.dev is None else str(req.dev),
        "" if req.ino is None else str(req.ino),
        str(req.head_len),
        f"{tuning.poll:g}",
        str(max(1, round(tuning.rotate_wait / tuning.poll))),
        str(tuning.max_chunk),
        str(HEAD_BYTES),
        str(ticks),
        f"{tuning.idle_poll:g}",
        str(max(1, round(tuning.idle_poll / tuning.poll))),
    ]
    # `timeout` bounds the reader even if SIGPIPE never comes (a silent network cut).
    inner = " ".join(shlex.quote(a) for a in ["sh", "-c", _SCRIPT, _SYNC.decode(), *args])
    return f"exec timeout {tuning.session_seconds} {inner}"


def _known_hosts_name(target: SshTarget) -> str:
    return target.host if target.port == 22 else f"[{target.host}]:{target.port}"


def public_key_line(key: asyncssh.SSHKey) -> str:
    """``"ssh-ed25519 AAAA…"``: a host key as :attr:`SshTarget.host_key` takes it."""
    kind, blob = key.export_public_key("openssh").decode().split()[:2]
    return f"{kind} {blob}"


def _known_hosts_line(target: SshTarget, key: asyncssh.SSHKey) -> str:
    return f"{_known_hosts_name(target)} {public_key_line(key)}\n"


class _PinningClient(asyncssh.SSHClient):
    """Accepts an unknown host's key only when no key is recorded for it (first sight)."""

    def __init__(self, may_pin: bool) -> None:
        self.may_pin = may_pin
        self.pinned: asyncssh.SSHKey | None = None

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        if not self.may_pin:
            return False
        self.pinned = key
        return True


#: AES-GCM first (AES-NI, one call per packet): asyncssh's chacha20-poly1305, its default,
#: makes three calls per packet, and uploading the agent's 30 MB wheelhouse spent most of the
#: control plane's CPU in them; every OpenSSH server offers both
ENCRYPTION_ALGS = [
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
]


async def open_connection(
    target: SshTarget, *, connect_timeout: float = 10.0, first_contact: bool = False
) -> asyncssh.SSHClientConnection:
    """Connect with keepalive and host-key checks; HostKeyError when the key is refused.

    ``first_contact``: accept whatever key the host shows and record it nowhere (the caller
    reads ``conn.get_server_host_key()`` and pins it), for a machine created moments ago.
    """
    kh_path = target.known_hosts_path
    if target.host_key is not None:
        text = f"{_known_hosts_name(target)} {target.host_key.strip()}\n"
    else:
        try:
            text = "" if first_contact else kh_path.read_text()
        except FileNotFoundError:
            text = ""
    known = asyncssh.import_known_hosts(text)
    trusted, cas, revoked = known.match(target.host, "", target.port)[:3]
    has_entry = bool(trusted or cas or revoked)
    may_pin = (first_contact or target.accept_new_host_key) and not has_entry
    client = _PinningClient(may_pin=may_pin)
    options: dict = {}
    if target.key is not None:
        options["client_keys"] = [str(target.key)]
        options["agent_path"] = None
    try:
        conn, _ = await asyncio.wait_for(
            asyncssh.create_connection(
                lambda: client,
                target.host,
                target.port,
                username=target.user,
                known_hosts=known,
                server_host_key_algs=_host_key_algs(trusted),
                encryption_algs=ENCRYPTION_ALGS,
                keepalive_interval=KEEPALIVE_INTERVAL,
                keepalive_count_max=KEEPALIVE_COUNT_MAX,
                login_timeout=connect_timeout,
                **options,
            ),
            connect_timeout,
        )
    except asyncssh.HostKeyNotVerifiable as exc:
        raise _host_key_error(target, has_entry) from exc
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        raise ConnectionLost(_describe(exc)) from exc
    if client.pinned is not None and not first_contact:
        kh_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with kh_path.open("a") as fh:
            fh.write(_known_hosts_line(target, client.pinned))
    return conn


def _host_key_algs(trusted: list[asyncssh.SSHKey]) -> list[str] | str:
    """The pinned keys' algorithms first, then every other default one.

    asyncssh offers only the pinned keys' algorithms by default, so a server whose key is of
    another type fails the key exchange, which looks like a network error and is retried
    until the deadline. Offered last, the other types let that server show its key, and the
    key check refuses it at once, as it refuses a changed key of the same type. A server
    that has a key of the pinned type still picks it: the client's order decides.
    """
    if not trusted:
        return "default"
    first: list[bytes] = []
    for key in trusted:
        first += [a for a in key.sig_algorithms if a not in first]
    rest = [a for a in get_default_public_key_algs() if a not in first]
    return [a.decode() for a in first + rest]


def _host_key_error(target: SshTarget, has_entry: bool) -> HostKeyError:
    where = "the pinned key" if target.host_key else str(target.known_hosts_path)
    if target.host_key:
        return HostKeyError(
            f"the host key of {target.host}:{target.port} does not match the key pinned for "
            "this machine; refusing to connect",
            hint="a reused address now reaches another machine, or the machine was rebuilt",
        )
    if has_entry:
        return HostKeyError(
            f"the host key of {target.host}:{target.port} does not match the one in {where}; "
            "refusing to connect",
            hint="if the machine was really replaced, remove its old line from that file",
        )
    return HostKeyError(
        f"the host key of {target.host}:{target.port} is not in {where}",
        hint="pass --accept-new-host-key to pin it on first sight",
    )


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


class ReadSession:
    """One running remote reader: ``await next_event()`` until it returns None (ended)."""

    def __init__(self, process: asyncssh.SSHClientProcess, tuning: ReadTuning) -> None:
        self._proc = process
        self._tuning = tuning
        self._synced = False

    @classmethod
    async def start(
        cls,
        conn: asyncssh.SSHClientConnection,
        path: str,
        req: SessionRequest,
        tuning: ReadTuning,
    ) -> ReadSession:
        """Start the remote reader for ``req`` on an open connection."""
        try:
            proc = await conn.create_process(
                remote_command(path, req, tuning), encoding=None, stderr=asyncssh.DEVNULL
            )
        except (OSError, asyncssh.Error) as exc:
            raise ConnectionLost(_describe(exc)) from exc
        return cls(proc, tuning)

    async def next_event(self) -> Event | None:
        """The next meaningful event, or None when the session ended normally."""
        try:
            if not self._synced:
                await self._skip_noise()
            while True:
                header = await self._read(self._proc.stdout.readline())
                if not header.endswith(b"\n"):
                    return None  # EOF, possibly inside a record
                ev = await self._parse(header.split())
                if ev is not None:
                    return ev
        except _SessionEnded:
            return None

    def close(self) -> None:
        """Close the channel without waiting; the remote loop sees its stdin close and
        exits (at the latest, SIGPIPE at its next heartbeat or `timeout` ends it)."""
        self._proc.close()

    async def _read(self, aw: Awaitable[bytes]) -> bytes:
        try:
            return await asyncio.wait_for(aw, self._tuning.stall)
        except TimeoutError as exc:
            raise ConnectionLost(f"no data or heartbeat for {self._tuning.stall:g}s") from exc
        except asyncio.IncompleteReadError as exc:
            # `timeout` ended the reader mid-record: a normal end of session, the torn
            # record is simply read again by the next one.
            raise _SessionEnded from exc
        except (OSError, asyncssh.Error) as exc:
            raise ConnectionLost(_describe(exc)) from exc

    async def _skip_noise(self) -> None:
        # Some images' shell startup files print to stdout even for `ssh host command`.
        skipped = 0
        while (line := await self._read(self._proc.stdout.readline())) != _SYNC + b"\n":
            skipped += len(line)
            if not line.endswith(b"\n") or skipped > 65536:
                raise ConnectionLost(
                    "the remote reader did not start (is this a POSIX shell with GNU "
                    "coreutils?); first output: " + repr(line[:80].decode("utf-8", "replace"))
                )
        self._synced = True

    async def _bytes(self, n: int) -> bytes:
        if n < 0:
            raise ValueError("negative length")
        return await self._read(self._proc.stdout.readexactly(n)) if n else b""

    async def _parse(self, parts: list[bytes]) -> Event | None:
        try:
            kind = parts[0]
            if kind == b"W" or parts == [b"K"]:
                return None
            if kind == b"K":
                return Checked(int(parts[1]), await self._bytes(int(parts[2])))
            if kind == b"O":
                dev, ino, size = (int(p) for p in parts[1:4])
                mode = parts[4].decode()
                if mode not in ("new", "same", "old"):
                    raise ValueError(mode)
                head = await self._bytes(int(parts[5]))
                return Opened(dev, ino, size, head, mode)  # type: ignore[arg-type]
            if kind == b"D":
                data = await self._bytes(int(parts[1]))
                line = await self._read(self._proc.stdout.readline())
                if not line.endswith(b"\n"):
                    raise _SessionEnded
                check = line.split()
                if len(check) != 3 or check[0] != b"V":
                    raise ValueError("missing V record")
                return Chunk(data, int(check[1]), await self._bytes(int(check[2])))
            if kind == b"R":
                return Rotated(parts[1:] == [b"1"])
            if kind == b"T":
                return Truncated(int(parts[1]), parts[2:] == [b"1"])
            if kind == b"G":
                return Gone()
            if kind == b"N":
                raise NotRegularFile(b" ".join(parts[1:]).decode("utf-8", "replace") or "?")
        except (IndexError, ValueError) as exc:
            raise ConnectionLost(f"garbled record from the remote reader: {exc}") from exc
        raise ConnectionLost(f"unknown record from the remote reader: {parts[:1]!r}")
