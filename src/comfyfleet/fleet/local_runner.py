"""Provision one slot of the local provider: a ``provision`` subprocess, its log, its outcome.

The fleet calls, per instance (the slot is the instance's ``provider_id``)::

    runner = LocalRunner(provider, manifest_path, secrets={"HF_TOKEN": ...})
    outcome = await runner.provision("0", label, sink)      # complete / failed + reason

It starts ``sys.executable -m comfyfleet provision <slot manifest> --root <slot root>
--content-store <base_dir>/content --json`` in a session of its own (it outlives a killed
runner, like a remote provision outlives a dropped SSH link), with the slot's
``CUDA_VISIBLE_DEVICES``, and records it in the slot (pid + start time + label). It follows the
slot's ``ROOT/.comfyfleet/provision.log`` into ``sink`` exactly once: every chunk goes with the
checkpoint of the position after it, and a restarted runner resumes from the sink's last
durable checkpoint. A runner restarted while the provision still runs adopts it (no second
provision); one restarted after it ended reads the outcome from the log's marker.

Secrets: ``provision --secrets-stdin`` is not on main yet, so the pool's secrets reach the
provision process through its environment — only when the manifest downloads models, and only
the names the pool lists. (With ``--secrets-stdin`` they would stay out of the environment
that ComfyUI inherits.)
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from secrets import token_hex
from typing import TYPE_CHECKING, Any, Literal, Protocol

from comfyfleet.fleet.providers.local import (
    RUN_ENV,
    LocalProvider,
    Slot,
    locate_run,
    read_run,
    run_alive,
    slot_manifest,
    start_ticks,
    write_run,
)
from comfyfleet.names import escape_controls

if TYPE_CHECKING:
    from comfyfleet.fleet.config import PoolConfig

Checkpoint = dict[str, Any]
#: bytes read from the log in one step (one chunk handed to the sink)
CHUNK = 1 << 20
#: seconds between two looks at the log while nothing new arrived
POLL = 0.2
#: the tail of the log searched for the final marker
MARKER_WINDOW = 64 * 1024


class LogSink(Protocol):
    """Where the followed log goes (the shape of ``comfyfleet.logstream.sink.LogSink``)."""

    def resume(self) -> Checkpoint | None:
        """The last durable checkpoint (None: nothing yet); drop every chunk after it."""
        ...

    def append(self, chunk: bytes, checkpoint: Checkpoint) -> None:
        """Take ``chunk`` and the checkpoint of the position after it (must not block)."""
        ...

    def flush(self) -> None:
        """Make every appended chunk durable with the last checkpoint (runs in a thread)."""
        ...

    def close(self) -> None:
        """Release files or connections (after a final ``flush``)."""
        ...


@dataclass(frozen=True)
class LocalOutcome:
    """How a slot's provision ended."""

    outcome: Literal["complete", "failed"]
    reason: str
    url: str
    #: the provision process's exit code (None when it was adopted, not our child)
    exit_code: int | None = None
    #: True when this call found the provision already started (a restarted runner)
    adopted: bool = False
    #: ``comfyfleet status --json`` of the slot at the end
    comfyui: dict[str, Any] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        """Provision said complete and ComfyUI answers healthy."""
        return self.outcome == "complete" and bool(self.comfyui.get("healthy"))


class LocalTail:
    """Follows one local file into a sink, exactly once (blocking: call from a thread).

    The checkpoint names the file by ``(dev, ino)`` and an offset. A file with another
    identity is a new run's log (``provision`` rotates the old one away at its start): it is
    read from 0. ``skip`` is the identity of the log the previous run left, never followed.
    """

    def __init__(self, path: Path, sink: LogSink, *, skip: tuple[int, int] | None = None) -> None:
        self.path = path
        self.sink = sink
        self.skip = skip
        cp = sink.resume()
        self.ident: tuple[int, int] | None = (cp["dev"], cp["ino"]) if cp else None
        self.offset: int = int(cp["offset"]) if cp else 0

    def poll(self) -> int:
        """Hand every byte written since the last call to the sink; return how many."""
        try:
            fh = open(self.path, "rb")
        except FileNotFoundError:
            return 0
        with fh:
            st = os.fstat(fh.fileno())
            ident = (st.st_dev, st.st_ino)
            if ident == self.skip:
                return 0
            if ident != self.ident:
                self.ident, self.offset = ident, 0
            n = 0
            while chunk := os.pread(fh.fileno(), CHUNK, self.offset):
                self.offset += len(chunk)
                n += len(chunk)
                self.sink.append(chunk, {"dev": ident[0], "ino": ident[1], "offset": self.offset})
        if n:
            self.sink.flush()
        return n

    def marker(self) -> tuple[str, str] | None:
        """The final marker of the followed file: ``("complete"|"failed", line)``, or None."""
        import comfyfleet

        try:
            with open(self.path, "rb") as fh:
                st = os.fstat(fh.fileno())
                if (st.st_dev, st.st_ino) != self.ident:
                    return None
                start = max(0, st.st_size - MARKER_WINDOW)
                data = os.pread(fh.fileno(), MARKER_WINDOW, start)
        except FileNotFoundError:
            return None
        found = None
        for raw in data.splitlines():
            hit = comfyfleet.MarkerSet().first_match((raw,))
            if hit is not None:
                found = hit  # the last one: a run ends with exactly one
        return found


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _last_line(path: Path) -> str:
    """``": <the last non-empty line of path>"`` (what a provision that wrote no log said)."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            data = os.pread(fh.fileno(), 4096, max(0, size - 4096))
    except OSError:
        return ""
    lines = [ln for ln in data.decode("utf-8", "replace").splitlines() if ln.strip()]
    return f": {lines[-1].strip()[:300]}" if lines else ""


class LocalRunner:
    """Runs and follows provisions in the local provider's slots."""

    def __init__(
        self,
        provider: LocalProvider,
        manifest: Path,
        *,
        secrets: Mapping[str, str] | None = None,
        python: str = sys.executable,
        poll: float = POLL,
    ) -> None:
        self.provider = provider
        self.manifest = Path(manifest)
        self.secrets = dict(secrets or {})
        self.python = python
        self.poll = poll

    @classmethod
    def for_pool(cls, config: PoolConfig, provider: LocalProvider) -> LocalRunner:
        """The runner of a pool: its manifest, and its ``secrets`` from our environment."""
        secrets = {n: os.environ[n] for n in config.pool.secrets if os.environ.get(n)}
        return cls(provider, config.manifest_path, secrets=secrets)

    def log_path(self, slot: Slot) -> Path:
        """The slot's ``ROOT/.comfyfleet/provision.log``."""
        return slot.root / ".comfyfleet" / "provision.log"

    async def provision(self, provider_id: str, label: str, sink: LogSink) -> LocalOutcome:
        """Provision the slot for ``label`` (or adopt the provision already started for it)
        and follow its log into ``sink`` until it ends; never raises for a failed provision."""
        slot = self.provider.slot(provider_id)
        if slot is None:
            raise ValueError(f"no slot {escape_controls(provider_id)}")
        record = await asyncio.to_thread(lambda: locate_run(read_run(slot)))
        proc: subprocess.Popen[bytes] | None = None
        if record is not None and record.get("label") == label:
            # This instance's provision was started (or at least intended) by an earlier runner.
            skip = tuple(record["skip"]) if record.get("skip") else None
            adopted = True
            if record.get("pid") is None and _identity(self.log_path(slot)) in (skip, None):
                # The intent was written, but no provision runs and none wrote a new log:
                # it never started. Start it now, under the same intent.
                proc = await self._start(slot, record, skip)
                adopted = False
            elif record.get("pid") is not None:
                await asyncio.to_thread(write_run, slot, record)
        else:
            skip = _identity(self.log_path(slot))
            intent = {"label": label, "run": token_hex(8), "pid": None,
                      "start_ticks": None, "skip": list(skip) if skip else None}  # fmt: skip
            proc = await self._start(slot, intent, skip)
            adopted = False
        tail = await asyncio.to_thread(LocalTail, self.log_path(slot), sink, skip=skip)  # type: ignore[arg-type]
        code = await self._follow(tail, proc, record if adopted else None)
        await asyncio.to_thread(tail.poll)  # what was written before it exited
        status = await self._status(slot)
        return self._outcome(tail, slot, code, adopted, status)

    async def _start(
        self, slot: Slot, intent: Mapping[str, Any], skip: tuple[int, int] | None
    ) -> subprocess.Popen[bytes]:
        """Write the intent, start the provision, then record its pid (state before action:
        a runner killed in between leaves an intent that :func:`locate_run` resolves)."""
        manifest = await asyncio.to_thread(slot_manifest, self.manifest, slot)
        await asyncio.to_thread(slot.root.mkdir, parents=True, exist_ok=True)
        import comfyfleet

        needs_tokens = bool(comfyfleet.load_manifest(manifest).models)
        env = {k: v for k, v in os.environ.items() if k not in self.secrets}
        env.update(slot.env)
        env[RUN_ENV] = str(intent["run"])
        if needs_tokens:
            env.update(self.secrets)
        await asyncio.to_thread(write_run, slot, intent)
        # A plain Popen, not an asyncio transport: closing a transport kills its child, and
        # the provision must outlive this runner (a restarted runner adopts it).
        with (
            open(slot.dir / "provision.out", "wb") as out,
            open(slot.dir / "provision.err", "wb") as err,
        ):
            proc = subprocess.Popen(
                [self.python, "-m", "comfyfleet", "provision", str(manifest),
                 "--root", str(slot.root), "--content-store", str(self.provider.content_store),
                 "--json"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env,
                start_new_session=True,
            )  # fmt: skip
        record = {**intent, "pid": proc.pid, "start_ticks": start_ticks(proc.pid)}
        await asyncio.to_thread(write_run, slot, record)
        return proc

    async def _follow(
        self,
        tail: LocalTail,
        proc: subprocess.Popen[bytes] | None,
        record: Mapping[str, Any] | None,
    ) -> int | None:
        """Tail until the provision ends; its exit code when it is our child."""
        while True:
            got = await asyncio.to_thread(tail.poll)
            if proc is not None:
                code = proc.poll()  # reaps our child when it has exited
                if code is not None:
                    return code
            elif not run_alive(record):
                return None
            if not got:
                await asyncio.sleep(self.poll)

    async def _status(self, slot: Slot) -> dict[str, Any]:
        proc = await asyncio.create_subprocess_exec(
            self.python, "-m", "comfyfleet", "status", "--root", str(slot.root), "--json",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        out, _ = await proc.communicate()
        try:
            doc = json.loads(out)
        except ValueError:
            return {}
        return doc if isinstance(doc, dict) else {}

    @staticmethod
    def _outcome(
        tail: LocalTail, slot: Slot, code: int | None, adopted: bool, status: dict[str, Any]
    ) -> LocalOutcome:
        hit = tail.marker()
        if hit is not None and hit[0] == "complete" and code in (0, None):
            return LocalOutcome("complete", "", slot.url, code, adopted, status)
        if hit is not None and hit[0] == "failed":
            reason = hit[1].strip().split("PROVISIONING FAILED:", 1)[-1].strip()
        elif code is None:
            reason = "provision ended without a final marker in provision.log"
        elif code < 0:
            reason = f"provision was killed by signal {-code}"
        else:
            reason = f"provision exited with code {code}" + _last_line(slot.dir / "provision.err")
        return LocalOutcome("failed", escape_controls(reason), slot.url, code, adopted, status)
