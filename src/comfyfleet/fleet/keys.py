"""Lease keys: a fresh SSH key per lease, one line in the instance's authorized_keys.

When an instance becomes ready, :func:`attach_standby_key` makes a key pair, appends its
public half to the login user's ``~/.ssh/authorized_keys`` (over SSH with the pool's own
key) and records it in the store as the instance's standby key, so that a lease is one store
transaction and no SSH round trip. The line's comment names the pool, the instance and the
lease id the key will serve. :func:`remove_lease_key` removes exactly that line and nothing
else (byte-exact whole-line match), so the pool's key and the operator's keys stay.
"""

from __future__ import annotations

import secrets
import shlex
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import asyncssh

from comfyfleet.errors import ComfyfleetError
from comfyfleet.logstream.remote import ConnectionLost, SshTarget, open_connection
from comfyfleet.names import escape_controls

if TYPE_CHECKING:
    from comfyfleet.fleet.api import ApiContext
    from comfyfleet.fleet.store import InstanceRow


class LeaseKeyError(ComfyfleetError):
    """A lease key could not be added to or removed from an instance."""


@dataclass(frozen=True)
class LeaseKey:
    """A generated key pair: the OpenSSH private key text and its authorized_keys line."""

    lease_id: str
    private_key: str
    public_line: str


def new_lease_id() -> str:
    """A fresh lease id (hex: plain in file names, comments and URLs)."""
    return secrets.token_hex(8)


def key_comment(pool: str, instance_id: str, lease_id: str) -> str:
    """The comment that names the key's instance and lease in authorized_keys."""
    return f"comfyfleet-lease:{pool}:{instance_id}:{lease_id}"


def generate_lease_key(pool: str, instance_id: str, lease_id: str | None = None) -> LeaseKey:
    """A new ed25519 key pair for one (future) lease of ``instance_id``."""
    lease_id = lease_id or new_lease_id()
    key = asyncssh.generate_private_key("ssh-ed25519")
    kind, blob = key.export_public_key("openssh").decode().split()[:2]
    line = f"{kind} {blob} {key_comment(pool, instance_id, lease_id)}"
    return LeaseKey(lease_id, key.export_private_key("openssh").decode(), line)


class KeyInstaller(Protocol):
    """Adds and removes one authorized_keys line on an instance."""

    async def add(self, row: InstanceRow, line: str) -> None:
        """Append ``line`` to the login user's authorized_keys."""

    async def remove(self, row: InstanceRow, line: str) -> None:
        """Remove exactly the lines equal to ``line`` (nothing else changes)."""


# $1 is the line. A final line without a newline gets one first, so ours is a line of its own.
_ADD = r"""set -e
umask 077
mkdir -p "$HOME/.ssh"
f="$HOME/.ssh/authorized_keys"
if [ -s "$f" ] && [ -n "$(tail -c 1 "$f")" ]; then printf '\n' >> "$f"; fi
printf '%s\n' "$1" >> "$f"
"""
# grep exits 1 when nothing is left (the file held only our line): still a success
_REMOVE = r"""set -e
umask 077
f="$HOME/.ssh/authorized_keys"
[ -e "$f" ] || exit 0
t="$f.comfyfleet.$$"
rc=0; grep -vxF -e "$1" "$f" > "$t" || rc=$?
if [ "$rc" -gt 1 ]; then rm -f "$t"; exit "$rc"; fi
chmod 600 "$t"
mv -f "$t" "$f"
"""


@dataclass
class SshKeyInstaller:
    """Edits authorized_keys over SSH with the pool's key; host keys per instance.

    ``login_key(row)``: the private key file the pool logs in with; ``host_key(row)``: the
    host key pinned for that instance (None, or no callable: ``known_hosts`` is checked).
    """

    login_key: Callable[[InstanceRow], Path | None]
    host_key: Callable[[InstanceRow], Awaitable[str | None]] | None = None
    known_hosts: Path | None = None
    connect_timeout: float = 10.0

    async def add(self, row: InstanceRow, line: str) -> None:
        """Append ``line`` to the login user's authorized_keys."""
        await self._run(row, _ADD, line)

    async def remove(self, row: InstanceRow, line: str) -> None:
        """Remove exactly the lines equal to ``line``."""
        await self._run(row, _REMOVE, line)

    async def _run(self, row: InstanceRow, script: str, line: str) -> None:
        if not row.ssh_host or not row.ssh_port or not row.ssh_user:
            raise LeaseKeyError(f"{row.id}: no SSH endpoint recorded; cannot edit its keys")
        pinned = await self.host_key(row) if self.host_key is not None else None
        target = SshTarget(
            row.ssh_host, row.ssh_port, row.ssh_user, self.login_key(row),
            known_hosts=self.known_hosts, host_key=pinned,
        )  # fmt: skip
        command = " ".join(shlex.quote(a) for a in ["sh", "-c", script, "comfyfleet-keys", line])
        try:
            conn = await open_connection(target, connect_timeout=self.connect_timeout)
        except (ConnectionLost, OSError, asyncssh.Error) as exc:
            raise LeaseKeyError(f"{row.id}: cannot reach {target.label}: {exc}") from None
        try:
            done = await conn.run(command, encoding="utf-8", errors="replace")
        except (OSError, asyncssh.Error) as exc:
            raise LeaseKeyError(f"{row.id}: {target.label}: {exc}") from None
        finally:
            conn.close()
        if done.exit_status != 0:
            tail = " / ".join(str(done.stderr or "").strip().splitlines()[-2:])
            raise LeaseKeyError(
                f"{row.id}: editing authorized_keys failed (exit {done.exit_status}): "
                + escape_controls(tail)
            )


async def attach_standby_key(ctx: ApiContext, instance: InstanceRow) -> str | None:
    """Give a ready ``instance`` a fresh standby key (on the instance, then in the store);
    returns the lease id the key will serve, or None for a provider without SSH (local)."""
    from comfyfleet.fleet import leases

    if instance.provider_kind == "local":
        key = LeaseKey(new_lease_id(), "", "")
    else:
        key = generate_lease_key(ctx.store.pool, instance.id)
        await ctx.keys.add(instance, key.public_line)
    await leases.record_standby_key(ctx.store, instance.id, key, now=ctx.clock())
    ctx.metrics.observe_ready(instance, ctx.clock())
    ctx.broker.wake()
    return key.lease_id


async def remove_lease_key(ctx: ApiContext, instance: InstanceRow, lease_id: str) -> bool:
    """Remove the authorized_keys line of ``lease_id`` from ``instance``; False if unknown."""
    from comfyfleet.fleet import leases

    line = await leases.key_line(ctx.store, lease_id)
    if line is None:
        return False
    if line and instance.provider_kind != "local":
        await ctx.keys.remove(instance, line)
    await leases.mark_key_removed(ctx.store, lease_id)
    return True
