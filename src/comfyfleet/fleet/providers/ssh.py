"""The SSH-hosts provider (``kind = "ssh"``): machines you own, claimed and released, never
created or destroyed.

A host belongs to a pool while it holds a claim file, ``~/.comfyfleet/claim``: one JSON line
``{"label": ..., "pool": ...}``. The file is the host's own record, so ownership works exactly as
on Vast (label regex AND pool marker, both read from the claim) and survives a control-plane
crash. Claiming is atomic: the content is written to a temporary file and hard-linked into place
(``ln`` fails when a claim exists), so no reader ever sees half a claim and two pools never hold
one host. Releasing stops what runs in the instance root — ComfyUI by its pid file (``comfyfleet
stop``'s semantics: the recorded process group, TERM then KILL) and any process holding the
root's lock (a provision) — then removes the claim only if it is still the one we read.

The remote side is POSIX ``sh`` with coreutils; no Python is assumed on the host.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh

from comfyfleet.fleet.errors import (
    OfferUnavailable,
    ProviderAuthError,
    ProviderError,
    ProviderUnreachable,
)
from comfyfleet.fleet.providers.base import (
    LABEL_PREFIX,
    Claim,
    Created,
    Health,
    Offer,
    ProviderInstance,
    SshEndpoint,
    parse_claim,
)
from comfyfleet.fleet.providers.blocklist import Blocklist
from comfyfleet.names import escape_controls

#: seconds to connect (TCP + SSH handshake) and for one remote command
CONNECT_TIMEOUT = 10.0
COMMAND_TIMEOUT = 60.0
#: how many hosts are asked at once during a listing or an offer search
PARALLEL_HOSTS = 16
#: TERM, then KILL after this many seconds (runtime.STOP_GRACE)
STOP_GRACE = 15.0
#: keepalives so a dead link fails in seconds, not at the TCP timeout (off by default)
KEEPALIVE_INTERVAL = 5.0

# labels and pool names travel into shell arguments and JSON: keep them plain
_TOKEN = re.compile(r"^[A-Za-z0-9._-]{1,128}$")

_READ = r"""
f="$HOME/.comfyfleet/claim"
if [ -f "$f" ]; then printf 'claim %s\n' "$(head -c 4096 "$f" | tr -d '\n')"; else echo free; fi
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | sed 's/^/gpu /'
fi
exit 0
"""

_CLAIM = r"""
d="$HOME/.comfyfleet" f="$HOME/.comfyfleet/claim"
mkdir -p "$d" || exit 4
t="$d/.claim.$$"
printf '%s\n' "$1" > "$t" || { rm -f "$t"; exit 4; }
# ln refuses an existing target: the claim appears whole, and only once
if ln "$t" "$f" 2>/dev/null; then rm -f "$t"; echo claimed; exit 0; fi
rm -f "$t"
printf 'held %s\n' "$(head -c 4096 "$f" 2>/dev/null | tr -d '\n')"
exit 3
"""

# $1 = instance root, $2 = grace seconds, $3 = the claim line we read (removed only if unchanged)
_RELEASE = r"""
root=$1 grace=$2 expect=$3
f="$HOME/.comfyfleet/claim"
[ -f "$f" ] || { echo gone; exit 0; }
[ "$(head -c 4096 "$f" | tr -d '\n')" = "$expect" ] || { echo other; exit 0; }
field() { sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f"$2"; }
mine=$(field $$ 3)
pids=""
pidf="$root/.comfyfleet/comfyui.pid"
if [ -f "$pidf" ]; then
  pid=$(sed -n 's/^ *"pid": *\([0-9][0-9]*\).*/\1/p' "$pidf" | head -n 1)
  ticks=$(sed -n 's/^ *"start_ticks": *\([0-9][0-9]*\).*/\1/p' "$pidf" | head -n 1)
  if [ -n "$pid" ] && [ -r "/proc/$pid/stat" ]; then
    # a reused pid (another start time) is not ours: field 22 of /proc/PID/stat
    if [ -z "$ticks" ] || [ "$(field "$pid" 20)" = "$ticks" ]; then pids="$pid"; fi
  fi
fi
lock="$root/.comfyfleet/lock"
if [ -e "$lock" ]; then
  lock=$(readlink -f "$lock")
  for fd in /proc/[0-9]*/fd/*; do
    [ "$(readlink "$fd" 2>/dev/null)" = "$lock" ] || continue
    p=${fd#/proc/}; p=${p%%/*}
    [ "$p" = "$$" ] || pids="$pids $p"
  done
fi
signal() {
  for p in $pids; do
    g=$(field "$p" 3)
    # -s SIG -- -PGID: the spelling dash, bash and busybox all accept for a group
    if [ "$g" = "$p" ] && [ "$g" != "$mine" ]; then kill -s "$1" -- "-$p" 2>/dev/null
    else kill -s "$1" "$p" 2>/dev/null; fi
  done
}
alive() {
  for p in $pids; do
    s=$(field "$p" 1)
    [ -n "$s" ] && [ "$s" != Z ] && return 0
  done
  return 1
}
if [ -n "$pids" ]; then
  signal TERM
  n=0
  while alive && [ "$n" -lt $((grace * 10)) ]; do sleep 0.1; n=$((n + 1)); done
  if alive; then signal KILL; sleep 0.2; fi
  echo "stopped$pids"
fi
rm -f "$pidf"
rm -f "$f" && echo released
"""


@dataclass(frozen=True)
class HostSpec:
    """One machine of the pool (``[[provider.hosts]]``)."""

    host: str
    port: int = 22
    user: str = "root"
    key: Path | None = None

    @property
    def id(self) -> str:
        """``host:port``: the provider id and offer id of this host."""
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class _Probe:
    claim: Claim | None
    gpus: list[str]


def claim_line(label: str, pool: str) -> str:
    """The claim file's one line."""
    return json.dumps({"label": label, "pool": pool})


Connect = Callable[[HostSpec], Awaitable[asyncssh.SSHClientConnection]]


class SshHostsProvider:
    """Claim and release hosts you own; list them by their claim files."""

    kind = "ssh"

    def __init__(
        self,
        hosts: list[HostSpec],
        *,
        pool: str,
        known_hosts: Path | None,
        connect: Connect | None = None,
        instance_root: str = "/workspace",
        stop_grace: float = STOP_GRACE,
        blocklist: Blocklist | None = None,
    ) -> None:
        if not _TOKEN.match(pool):
            raise ValueError(f"pool name {escape_controls(pool)!r} is not plain")
        self.hosts = {h.id: h for h in hosts}
        self.pool = pool
        #: asyncssh treats known_hosts=None as "check nothing": never pass that on
        self.known_hosts = known_hosts or Path("~/.ssh/known_hosts").expanduser()
        self._connect = connect or self._default_connect
        self.instance_root = instance_root
        self.stop_grace = stop_grace
        self.blocklist = blocklist or Blocklist()
        #: the last claim read per host, reported (as offline) while the host is unreachable
        self._last_claim: dict[str, Claim | None] = {}

    # --- the interface -------------------------------------------------------------------

    async def search_offers(self) -> list[Offer]:
        """One offer per reachable, unclaimed, unblocked host ($0/h: you own it)."""
        results = await self._probe_all()
        offers = []
        for spec, probe in results:
            if isinstance(probe, BaseException) or probe.claim is not None:
                continue
            if self.blocklist.is_blocked(spec.id):
                continue
            gpu = probe.gpus[0] if probe.gpus else ""
            offers.append(Offer(spec.id, spec.id, gpu, len(probe.gpus), 0.0))
        return offers

    async def create(
        self,
        offer: Offer,
        *,
        label: str,
        env: Mapping[str, str],
        onstart: str,
        ssh_public_key: str,
    ) -> Created:
        """Claim the host of ``offer`` for ``label`` (idempotent for the same label).

        ``env``, ``onstart`` and the key have no meaning on a host you own (it is reached with
        its configured key). A host claimed by another label is ``OfferUnavailable``.
        """
        spec = self._spec(offer.offer_id)
        if spec is None:
            raise OfferUnavailable(f"{escape_controls(offer.offer_id)!r} is not a configured host")
        if not _TOKEN.match(label):
            raise ProviderError(f"label {escape_controls(label)!r} is not plain")
        line = claim_line(label, self.pool)
        result = await self._run(spec, _CLAIM, line)
        out = result.stdout if isinstance(result.stdout, str) else ""
        if result.exit_status == 0:
            self._last_claim[spec.id] = Claim(label, self.pool, line)
            return Created(spec.id)
        if result.exit_status == 3:
            held = parse_claim(out.partition("held ")[2].strip())
            if held is not None and held.label == label and held.pool == self.pool:
                self._last_claim[spec.id] = held  # our own claim: an earlier answer was lost
                return Created(spec.id)
            raise OfferUnavailable(
                f"host {spec.id} is already claimed", hint="the next free host is tried"
            )
        raise ProviderError(
            f"cannot write the claim file on {spec.id} (exit {result.exit_status}): "
            f"{self._tail(result)}",
            hint="the user needs a writable home directory on that host",
        )

    async def list_instances(self) -> list[ProviderInstance]:
        """Every claimed host whose claim label starts with ``comfyfleet-``; a host that cannot
        be reached is reported with its last known claim as ``offline``, never as gone."""
        results = await self._probe_all()
        failures = [p for _, p in results if isinstance(p, BaseException)]
        if results and len(failures) == len(results):
            # nothing answered: this listing proves nothing about any host
            first = failures[0]
            if isinstance(first, ProviderError):
                raise first
            raise ProviderUnreachable(f"no host of the pool answered: {first}")
        found = []
        for spec, probe in results:
            if isinstance(probe, BaseException):
                inst = self._offline(spec, str(probe))
            else:
                inst = self._instance(spec, probe.claim, probe.gpus) if probe.claim else None
            if inst is not None and inst.label and inst.label.startswith(LABEL_PREFIX):
                found.append(inst)
        return found

    async def get(self, provider_id: str) -> ProviderInstance | None:
        """The host's claim now; ``None`` when it holds none (released)."""
        spec = self._spec(provider_id)
        if spec is None:
            return None
        try:
            probe = await self._probe(spec)
        except ProviderError as exc:
            inst = self._offline(spec, str(exc))
            if inst is None or inst.label is None:
                raise
            return inst
        return self._instance(spec, probe.claim, probe.gpus) if probe.claim else None

    async def destroy(self, provider_id: str, *, label: str | None = None) -> None:
        """Stop ComfyUI and any provision in the instance root, then remove the claim.

        Idempotent: a host with no claim, or claimed by another pool (or, given ``label``,
        by another label), is left alone and counts as released. Unreachable: raises, so the
        caller retries.
        """
        spec = self._spec(provider_id)
        if spec is None:
            return  # not one of our hosts: there is nothing of ours to release
        probe = await self._probe(spec)
        claim = probe.claim
        if claim is None or claim.pool != self.pool or (label is not None and claim.label != label):
            self._last_claim[spec.id] = claim
            return
        result = await self._run(
            spec, _RELEASE, self.instance_root, str(int(self.stop_grace)), claim.line
        )
        if result.exit_status != 0:
            raise ProviderError(
                f"cannot release {spec.id} (exit {result.exit_status}): {self._tail(result)}"
            )
        self._last_claim[spec.id] = None

    def health(self, inst: ProviderInstance) -> tuple[Health, str]:
        """A claimed, reachable host is ready to provision; an unreachable one waits."""
        if inst.status == "running" and inst.ssh is not None:
            return "reachable", f"claimed, SSH at {inst.ssh.host}:{inst.ssh.port}"
        return "booting", inst.status_msg or f"host is {inst.status}"

    def block(self, machine_id: str, reason: str) -> None:
        """Keep a host out of the offers for a while (doubling per repeat, decaying)."""
        if machine_id:
            self.blocklist.block(machine_id, reason)

    async def aclose(self) -> None:
        """Nothing to close: each call uses its own connection."""

    # --- SSH -----------------------------------------------------------------------------

    def _spec(self, provider_id: str) -> HostSpec | None:
        return self.hosts.get(provider_id)

    async def _default_connect(self, spec: HostSpec) -> asyncssh.SSHClientConnection:
        if not self.known_hosts.is_file():
            raise ProviderAuthError(
                f"the known_hosts file {self.known_hosts} does not exist: no host key can be "
                "checked",
                hint="record each host's key first (ssh-keyscan -p PORT HOST >> known_hosts) "
                "or set [provider] known_hosts",
            )
        if spec.key is not None and not spec.key.is_file():
            raise ProviderAuthError(
                f"the SSH key {spec.key} for {spec.id} does not exist",
                hint="fix key in [[provider.hosts]]",
            )
        options: dict[str, Any] = {
            "username": spec.user,
            "known_hosts": str(self.known_hosts),
            "keepalive_interval": KEEPALIVE_INTERVAL,
            "keepalive_count_max": 3,
            "connect_timeout": CONNECT_TIMEOUT,
        }
        if spec.key is not None:
            options["client_keys"] = [str(spec.key)]
            options["agent_path"] = None  # only the configured key
        return await asyncssh.connect(spec.host, spec.port, **options)

    async def _run(self, spec: HostSpec, script: str, *args: str) -> asyncssh.SSHCompletedProcess:
        """Run ``script`` with ``args`` under ``sh`` on the host; SSH failures mapped."""
        command = " ".join(["sh", "-c", shlex.quote(script), "comfyfleet", *map(shlex.quote, args)])
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT + COMMAND_TIMEOUT):
                conn = await self._connect(spec)
                async with conn:
                    return await conn.run(command, check=False)
        except asyncssh.HostKeyNotVerifiable as exc:
            raise ProviderAuthError(
                f"the host key of {spec.id} is not the one in {self.known_hosts}: {exc.reason}",
                hint="if the machine was reinstalled, replace its line in known_hosts "
                "(ssh-keyscan); never accept an unknown key blindly",
            ) from None
        except asyncssh.PermissionDenied:
            raise ProviderAuthError(
                f"{spec.user}@{spec.id} refused our SSH key",
                hint="check the host's key in [[provider.hosts]] and its authorized_keys",
            ) from None
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            reason = exc.reason if isinstance(exc, asyncssh.Error) else str(exc) or "timed out"
            raise ProviderUnreachable(
                f"cannot reach {spec.user}@{spec.id}: {escape_controls(reason)}",
                hint="check the host, its port and the network; retried on the next tick",
            ) from None

    async def _probe(self, spec: HostSpec) -> _Probe:
        result = await self._run(spec, _READ)
        out = result.stdout if isinstance(result.stdout, str) else ""
        claim = None
        gpus = []
        for line in out.splitlines():
            if line.startswith("claim "):
                claim = parse_claim(line[6:])
                if claim is None:
                    # a file we did not write: the host is not free, and not ours
                    claim = Claim("", "", line[6:])
            elif line.startswith("gpu "):
                gpus.append(escape_controls(line[4:].strip()))
        self._last_claim[spec.id] = claim
        return _Probe(claim, gpus)

    async def _probe_all(self) -> list[tuple[HostSpec, _Probe | BaseException]]:
        gate = asyncio.Semaphore(PARALLEL_HOSTS)

        async def one(spec: HostSpec) -> _Probe | BaseException:
            async with gate:
                try:
                    return await self._probe(spec)
                except ProviderError as exc:
                    return exc

        specs = list(self.hosts.values())
        probes = await asyncio.gather(*(one(s) for s in specs))
        return list(zip(specs, probes, strict=True))

    def _instance(self, spec: HostSpec, claim: Claim, gpus: list[str]) -> ProviderInstance:
        return ProviderInstance(
            provider_id=spec.id,
            label=claim.label or None,
            pool_marker=claim.pool or None,
            status="running",
            status_msg="claimed",
            ssh=SshEndpoint(spec.host, spec.port, spec.user),
            dph=0.0,
            machine_id=spec.id,
            gpu_name=gpus[0] if gpus else "",
            raw={"claim": claim.line},
        )

    def _offline(self, spec: HostSpec, reason: str) -> ProviderInstance | None:
        """An unreachable host as its last known claim says, or None if it had none."""
        if spec.id not in self._last_claim:
            # never read since start: its claim is unknown, so it cannot be matched to
            # anything; reported without a label (the ownership rule skips it)
            claim: Claim | None = Claim("", "", "")
        else:
            claim = self._last_claim[spec.id]
        if claim is None:
            return None  # it was free when last seen
        return ProviderInstance(
            provider_id=spec.id,
            label=claim.label or None,
            pool_marker=claim.pool or None,
            status="offline",
            status_msg=f"unreachable over SSH: {reason}",
            ssh=None,
            dph=0.0,
            machine_id=spec.id,
            raw={"claim": claim.line, "unreachable": True},
        )

    @staticmethod
    def _tail(result: asyncssh.SSHCompletedProcess) -> str:
        err = result.stderr if isinstance(result.stderr, str) else ""
        return escape_controls(err.strip()[-300:]) or "no output"
