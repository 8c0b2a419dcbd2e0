"""The local provider (``kind = "local"``): one machine, many ComfyUIs, no SSH.

An instance is a slot directory, ``base_dir/slots/<n>/``: slot ``n`` owns ``ports[n]`` and,
when ``gpus`` is given, ``gpus[n]`` (its ``CUDA_VISIBLE_DEVICES``). The slot is claimed by a
claim file, ``slots/<n>/claim`` (one JSON line: label, pool, port, gpu), created atomically
under the slot's flock (written to a temporary name, then hard-linked into place, which fails
when a claim exists), so two pools — or two ``pool serve`` processes — never hold one slot. The
claim is the slot's own record: ownership (label regex AND pool marker) works exactly as on
Vast and survives a control-plane crash. Releasing stops the slot's provision (the process
group recorded in ``slots/<n>/provision.json``) and ComfyUI (``comfyfleet stop --root``), then
removes the claim if it is still the one we read. The slot's root (``slots/<n>/root``) is kept:
the next instance in the slot reuses its checkout, venv and verified models.

The provisioning itself is :mod:`comfyfleet.fleet.local_runner`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import re
import signal
import sys
import time
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w
import yaml

from comfyfleet.fleet.errors import OfferUnavailable, ProviderError
from comfyfleet.fleet.providers.base import (
    POOL_ENV,
    Claim,
    Created,
    Health,
    Offer,
    ProviderInstance,
    parse_claim,
)
from comfyfleet.names import escape_controls, path_under

#: TERM, then KILL after this many seconds (as ``comfyfleet stop``)
STOP_GRACE = 15.0
#: the environment variable that names a slot's provision run (see :func:`find_run`)
RUN_ENV = "COMFYFLEET_SLOT_RUN"
#: labels and pool names are written into files and shown in logs: keep them plain
_TOKEN = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_SLOT = re.compile(r"^(0|[1-9][0-9]{0,3})$")


@dataclass(frozen=True)
class Slot:
    """One slot of the machine: its directory, root, port and GPU."""

    name: str
    dir: Path
    port: int
    gpu: int | None

    @property
    def root(self) -> Path:
        """The instance root (``provision --root``)."""
        return self.dir / "root"

    @property
    def claim_path(self) -> Path:
        return self.dir / "claim"

    @property
    def run_path(self) -> Path:
        """The provision record: ``{"label", "run", "pid", "start_ticks", "skip"}``."""
        return self.dir / "provision.json"

    @property
    def url(self) -> str:
        """Where this slot's ComfyUI answers (what a lease hands out)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """The environment the slot's processes get on top of ours (its GPU)."""
        return {"CUDA_VISIBLE_DEVICES": str(self.gpu)} if self.gpu is not None else {}


def start_ticks(pid: int) -> int | None:
    """Field 22 of ``/proc/PID/stat`` (when the process started): tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    state, ticks = fields[0], fields[19]
    return None if state == "Z" else int(ticks)


def read_run(slot: Slot) -> dict[str, Any] | None:
    """The slot's provision record (``pid`` is None while only the intent is written)."""
    try:
        doc = json.loads(slot.run_path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("run"), str):
        return None
    if doc.get("pid") is not None and not isinstance(doc["pid"], int):
        return None
    return doc


def write_run(slot: Slot, doc: Mapping[str, Any]) -> None:
    """Replace the slot's provision record atomically (temp, fsync, rename)."""
    tmp = slot.run_path.with_name(f".provision.json.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(dict(doc), fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, slot.run_path)


def find_run(token: str) -> tuple[int, int] | None:
    """The ``(pid, start_ticks)`` of the provision started with ``RUN_ENV=token``, if it runs.

    How an intent whose pid was never recorded (the runner died between the spawn and the
    record) is resolved. Its children (git, pip, ComfyUI) inherit the variable too: only a
    ``-m comfyfleet provision`` command line counts.
    """
    needle = f"{RUN_ENV}={token}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if needle in env and argv[1:4] == [b"-m", b"comfyfleet", b"provision"]:
            ticks = start_ticks(int(entry.name))
            if ticks is not None:
                return int(entry.name), ticks
    return None


def locate_run(record: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``record`` with its pid filled in from :func:`find_run` when only the intent was
    written (pid still None when no such process runs)."""
    if record is None:
        return None
    if record.get("pid") is not None:
        return dict(record)
    found = find_run(str(record["run"]))
    if found is None:
        return dict(record)
    return {**record, "pid": found[0], "start_ticks": found[1]}


def run_alive(record: Mapping[str, Any] | None) -> bool:
    """Whether the recorded provision process still runs (same pid AND same start time)."""
    if not record or record.get("pid") is None:
        return False
    ticks = start_ticks(int(record["pid"]))
    return ticks is not None and ticks == record.get("start_ticks")


def slot_manifest(manifest_path: Path, slot: Slot) -> Path:
    """Write the slot's copy of the pool manifest: ``--port`` is the slot's, workflow paths
    are absolute (so they still resolve from the slot directory). Return its path."""
    text = manifest_path.read_text(encoding="utf-8")
    if manifest_path.suffix.lower() in {".yaml", ".yml"}:
        doc = yaml.safe_load(text) or {}
    else:
        doc = tomllib.loads(text)
    comfyui = doc.setdefault("comfyui", {})
    args = [str(a) for a in comfyui.get("args", ["--listen", "127.0.0.1", "--port", "8188"])]
    out: list[str] = []
    skip = False
    for a in args:
        if skip:
            skip = False
        elif a == "--port":
            skip = True
        elif not a.startswith("--port="):
            out.append(a)
    comfyui["args"] = [*out, "--port", str(slot.port)]
    base = manifest_path.resolve().parent
    for wf in doc.get("workflows", []) or []:
        if isinstance(wf, dict) and isinstance(wf.get("path"), str):
            wf["path"] = str((base / wf["path"]).resolve())
    path = slot.dir / "manifest.toml"
    tmp = path.with_name(f".manifest.toml.{os.getpid()}.tmp")
    tmp.write_text(tomli_w.dumps(doc), encoding="utf-8")
    os.replace(tmp, path)
    return path


class LocalProvider:
    """Slots on this machine: claimed by create, listed by their claims, freed by destroy."""

    kind = "local"

    def __init__(
        self,
        base_dir: Path,
        ports: Sequence[int],
        gpus: Sequence[int] | None = None,
        *,
        pool: str,
        stop_grace: float = STOP_GRACE,
    ) -> None:
        if gpus is not None and len(gpus) != len(ports):
            raise ValueError("give one GPU per port, or no gpus")
        self.base_dir = Path(base_dir).expanduser().resolve()
        self.pool = pool
        self.stop_grace = stop_grace
        self.slots = {
            str(i): Slot(str(i), path_under(self.base_dir, "slots", str(i)), port,
                         gpus[i] if gpus is not None else None)
            for i, port in enumerate(ports)
        }  # fmt: skip

    @property
    def content_store(self) -> Path:
        """The content store every slot's provision shares (``--content-store``)."""
        return self.base_dir / "content"

    def slot(self, provider_id: str) -> Slot | None:
        """The slot called ``provider_id`` (None for anything else)."""
        return self.slots.get(provider_id) if _SLOT.fullmatch(provider_id) else None

    def url(self, inst: ProviderInstance) -> str:
        """The ComfyUI URL a lease on ``inst`` hands out: ``http://127.0.0.1:PORT``."""
        slot = self.slot(inst.provider_id)
        if slot is None:
            raise ProviderError(f"{escape_controls(inst.provider_id)} is not a slot of this pool")
        return slot.url

    # --- the interface -------------------------------------------------------------------

    async def search_offers(self) -> list[Offer]:
        """One offer per free slot, in slot order (dph 0)."""
        free = []
        for slot in self.slots.values():
            if await asyncio.to_thread(self._read_claim, slot) is None:
                free.append(self._offer(slot))
        return free

    async def create(
        self,
        offer: Offer,
        *,
        label: str,
        env: Mapping[str, str],
        onstart: str = "",
        ssh_public_key: str = "",
    ) -> Created:
        """Claim the offer's slot for ``label``; OfferUnavailable when it is taken."""
        slot = self.slot(offer.offer_id)
        if slot is None:
            raise OfferUnavailable(f"no slot {escape_controls(offer.offer_id)} on this machine")
        pool = env.get(POOL_ENV, self.pool)
        for value, what in ((label, "label"), (pool, "pool")):
            if not _TOKEN.fullmatch(value):
                raise ProviderError(f"{what} {escape_controls(value)!r} is not a plain token")
        line = json.dumps({"label": label, "pool": pool, "port": slot.port, "gpu": slot.gpu})
        if not await asyncio.to_thread(self._claim, slot, line):
            raise OfferUnavailable(f"slot {slot.name} is taken")
        return Created(provider_id=slot.name)

    async def list_instances(self) -> list[ProviderInstance]:
        """Every claimed slot whose label starts with ``comfyfleet-`` (status "running")."""
        out = []
        for slot in self.slots.values():
            claim = await asyncio.to_thread(self._read_claim, slot)
            if claim is not None and claim.label.startswith("comfyfleet-"):
                out.append(self._instance(slot, claim))
        return out

    async def get(self, provider_id: str) -> ProviderInstance | None:
        """The slot's instance; None when it is not claimed."""
        slot = self.slot(provider_id)
        if slot is None:
            return None
        claim = await asyncio.to_thread(self._read_claim, slot)
        return self._instance(slot, claim) if claim is not None else None

    async def destroy(self, provider_id: str, *, label: str | None = None) -> None:
        """Stop the slot's provision and ComfyUI, then free the slot.

        Idempotent: a free slot, or one claimed by another pool (or, given ``label``, by
        another label), is left alone and counts as destroyed.
        """
        slot = self.slot(provider_id)
        if slot is None:
            return
        claim = await asyncio.to_thread(self._read_claim, slot)
        if claim is None or claim.pool != self.pool or (label is not None and claim.label != label):
            return
        await self.stop_slot(slot)
        await asyncio.to_thread(self._release, slot, claim)

    def health(self, inst: ProviderInstance) -> tuple[Health, str]:
        """A claimed slot is ready to provision at once (nothing boots)."""
        return "reachable", f"slot {inst.provider_id} claimed (port {inst.raw.get('port')})"

    def block(self, machine_id: str, reason: str) -> None:
        """Nothing to block: the slots are this machine's."""

    async def aclose(self) -> None:
        """Nothing to close."""

    # --- stopping ------------------------------------------------------------------------

    async def stop_slot(self, slot: Slot) -> None:
        """Stop the slot's provision (its process group) and its ComfyUI; wait until gone."""
        record = await asyncio.to_thread(lambda: locate_run(read_run(slot)))
        if run_alive(record):
            assert record is not None
            await _terminate_group(int(record["pid"]), record, self.stop_grace)
        if (slot.root / ".comfyfleet").is_dir():
            # `comfyfleet stop --root` semantics, by the CLI (the provisioner's interface).
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "comfyfleet", "stop", "--root", str(slot.root), "--json",
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            _out, err = await proc.communicate()
            if proc.returncode != 0:
                tail = escape_controls(err.decode("utf-8", "replace").strip()[-300:])
                raise ProviderError(f"cannot stop ComfyUI in slot {slot.name}: {tail}")

    # --- files (blocking) ----------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, slot: Slot) -> Iterator[None]:
        slot.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(slot.dir / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held for milliseconds: a file write
            yield
        finally:
            os.close(fd)

    def _read_claim(self, slot: Slot) -> Claim | None:
        try:
            line = slot.claim_path.read_text(encoding="utf-8")[:4096]
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise ProviderError(f"cannot read {slot.claim_path}: {exc}") from None
        return parse_claim(line.strip())  # the file ends with a newline

    def _claim(self, slot: Slot, line: str) -> bool:
        with self._locked(slot):
            tmp = slot.dir / f".claim.{os.getpid()}.tmp"
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(line + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, slot.claim_path)  # refuses an existing claim: it appears once
                return True
            except FileExistsError:
                return False
            finally:
                tmp.unlink()

    def _release(self, slot: Slot, claim: Claim) -> None:
        with self._locked(slot):
            now = self._read_claim(slot)
            if now is None or now.line != claim.line:
                return  # already freed, or claimed again by someone else
            with contextlib.suppress(FileNotFoundError):
                slot.run_path.unlink()
            slot.claim_path.unlink()

    # --- records -------------------------------------------------------------------------

    def _offer(self, slot: Slot) -> Offer:
        return Offer(
            offer_id=slot.name,
            machine_id=f"local:{slot.name}",
            gpu_name=self._gpu_name(slot),
            num_gpus=1 if slot.gpu is not None else 0,
            dph=0.0,
            raw={"port": slot.port, "gpu": slot.gpu},
        )

    def _instance(self, slot: Slot, claim: Claim) -> ProviderInstance:
        return ProviderInstance(
            provider_id=slot.name,
            label=claim.label,
            pool_marker=claim.pool,
            status="running",
            status_msg=f"slot {slot.name}, port {slot.port}",
            ssh=None,
            dph=0.0,
            machine_id=f"local:{slot.name}",
            gpu_name=self._gpu_name(slot),
            raw={"port": slot.port, "gpu": slot.gpu, "root": str(slot.root), "url": slot.url},
        )

    @staticmethod
    def _gpu_name(slot: Slot) -> str:
        return f"GPU {slot.gpu}" if slot.gpu is not None else "local"


async def _terminate_group(pid: int, record: Mapping[str, Any], grace: float) -> None:
    """TERM the process group led by ``pid``, KILL it after ``grace``; wait until it is gone."""

    def send(sig: signal.Signals) -> None:
        if not run_alive(record):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(pid) == pid and pid != os.getpgrp():
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)

    send(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while run_alive(record) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    if run_alive(record):
        send(signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while run_alive(record) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
