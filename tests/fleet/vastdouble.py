"""A faithful Vast.ai API double for tests (the only stand-in: the real API cannot run here).

Built from /work/shared/reference/fleet.md §1 and its checklist §1.10. Where the reference does
not say what the real API does, the double GUESSES, follows the reference's nearest statement,
and says so in a comment marked ``GUESS``.

What it serves (every path also without its trailing slash; ``/api/v0`` and ``/api/v1``):

==================================================  ==============  ==========================
request                                             endpoint name   answer
==================================================  ==============  ==========================
``POST /api/v0/bundles/`` (flat query)              ``search``      ``{"offers": [...]}``
``PUT /api/v0/search/asks/`` (``{"q": ...}``)       ``search``      ``{"offers": [...]}``
``PUT /api/v0/asks/{id}/``                          ``create``      ``new_contract`` + key
``GET /api/v1/instances/`` (keyset pages of 25)     ``list``        ``instances, next_token``
``GET /api/v0/instances/?owner=me``                 ``list_v0``     ``{"instances": [...]}``
``GET /api/v0/instances/{id}/``                     ``show``        ``{"instances": obj|null}``
``DELETE /api/v0/instances/{id}/``                  ``destroy``     404 ``no_such_instance``
``PUT /api/v0/instances/{id}/``                     ``manage``      ``{"state"}``/``{"label"}``
``PUT /api/v0/instances/request_logs/{id}/``        ``logs``        ``{"result_url"}``
``POST /api/v0/instances/{id}/ssh/``                ``attach_ssh``  ``{"success": true}``
==================================================  ==============  ==========================

Auth: ``Authorization: Bearer <key>`` or the legacy ``?api_key=<key>``; anything else is 401.

Time: the status machine and the billing ledger run on the double's clock: real time (scaled
by nothing) plus whatever :meth:`VastDouble.advance` added, or only what ``advance`` adds when
``manual_clock=True``. Rate limits (``min_interval``) use real time: they are about how fast
requests arrive.

Use from async tests (``await double.start()`` / ``await double.stop()``, or ``async with``)
or from sync tests and subprocess tests (``start_in_thread()`` / ``stop_thread()``): the state
lives in the test process, so it survives a SIGKILL of the ``pool serve`` under test.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import itertools
import json
import random
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from comfyfleet.testing.background import LoopbackServer

HOURS_PER_MONTH = 730.0  # GUESS: Vast quotes storage in $/GB/month; 730 h is the usual month

#: the status_msg an OCI failure carries (dstack matches ": OCI runtime create failed:")
OCI_MESSAGE = (
    "Error response from daemon: failed to create task for container: failed to create shim "
    "task: OCI runtime create failed: runc create failed: unable to start container process: "
    'exec: "/bin/sh": permission denied: unknown'
)

#: detours an instance can take instead of null → loading → running
DETOURS = ("stuck_loading", "exited", "unknown", "offline", "oci", "outbid")

ENDPOINTS = (
    "search",
    "create",
    "list",
    "list_v0",
    "show",
    "destroy",
    "manage",
    "logs",
    "attach_ssh",
)

#: fault kinds the injector understands
FAULT_KINDS = (
    "429_text",  # 429, plain-text body, no Retry-After
    "429_json",  # 429, JSON body, no Retry-After
    "500",
    "502",
    "503",
    "504",
    "drop",  # connection dropped before the action: nothing happened
    "lost",  # the action happened, then the connection was dropped (the answer is lost)
    "hang",  # wait `seconds`, then handle normally (the request reached the server)
    "hang_after",  # handle, then wait `seconds` before answering
    "error_but_created",  # create only: an error answer that still names new_contract
    "no_such_ask",  # create only: 404 no_such_ask (the offer was taken meanwhile)
    "html",  # 200 with an HTML page (a proxy or captive portal in the way); nothing happened
)

# Columns of an instance row that exist only computed; v1 select_filters on them → 400
# (reference §1.5: "computed fields like dph_total/num_gpus → 400").
_COMPUTED_COLUMNS = frozenset({"dph_total", "num_gpus", "duration", "uptime_mins"})
_OPS = ("eq", "neq", "gt", "gte", "lt", "lte", "in", "notin")
_SEARCH_TOP_LEVEL = frozenset({"order", "type", "limit", "allocated_storage", "select_cols"})
_SEARCH_TYPES = frozenset({"on-demand", "ondemand", "bid", "reserved"})


# --- status machine ---------------------------------------------------------------------


@dataclass(frozen=True)
class Phase:
    """One state of an instance as the API reports it."""

    actual_status: str | None
    intended_status: str = "running"
    cur_state: str = "running"
    next_state: str = "running"
    status_msg: str = ""
    billed_compute: bool = False
    billed_storage: bool = True


SCHEDULING = Phase(None)
LOADING = Phase("loading", status_msg="Pulling image: downloading layers")  # GUESS: message text
RUNNING = Phase("running", status_msg="success, running", billed_compute=True)  # GUESS: text
EXITED = Phase("exited", status_msg="Container exited with code 1")  # GUESS: message text
UNKNOWN = Phase("unknown", status_msg="no recent heartbeat from host")  # GUESS: message text
# Offline: "not charged active rental or storage costs for instances that are currently
# offline" (reference §1.9).
OFFLINE = Phase("offline", status_msg="host disconnected", billed_storage=False)
OCI = Phase("created", status_msg=OCI_MESSAGE)
# Outbid/interrupted (dstack #4037): cur_state == intended_status == next_state == "stopped".
STOPPED = Phase("stopped", "stopped", "stopped", "stopped", status_msg="instance stopped")
PHASES = {
    "scheduling": SCHEDULING,
    "loading": LOADING,
    "running": RUNNING,
    "exited": EXITED,
    "unknown": UNKNOWN,
    "offline": OFFLINE,
    "created": OCI,
    "oci": OCI,
    "stopped": STOPPED,
    "outbid": STOPPED,
}


@dataclass(frozen=True)
class Timing:
    """Seconds on the double's clock between states (reference §4: boot is 1-5 min for real)."""

    scheduling: float = 0.2  # null → loading
    loading: float = 0.5  # loading → running
    detour_after: float = 0.5  # offline/outbid: seconds of running before the detour


def timeline_for(detour: str | None, t0: float, timing: Timing) -> list[tuple[float, Phase]]:
    """The planned (time, phase) steps of an instance created at ``t0``."""
    t_load = t0 + timing.scheduling
    t_run = t_load + timing.loading
    steps = [(t0, SCHEDULING)]
    if detour == "oci":
        return [*steps, (t_load, OCI)]
    steps.append((t_load, LOADING))
    if detour == "stuck_loading":
        return steps
    if detour == "exited":
        return [*steps, (t_run, EXITED)]
    if detour == "unknown":
        return [*steps, (t_run, UNKNOWN)]
    steps.append((t_run, RUNNING))
    if detour == "offline":
        steps.append((t_run + timing.detour_after, OFFLINE))
    elif detour == "outbid":
        steps.append((t_run + timing.detour_after, STOPPED))
    elif detour is not None:
        raise ValueError(f"unknown detour {detour!r}; one of {DETOURS}")
    return steps


# --- records ----------------------------------------------------------------------------


@dataclass
class OfferRecord:
    """One ask in the catalogue."""

    id: int
    machine_id: int
    host_id: int
    gpu_name: str = "RTX 4090"
    num_gpus: int = 1
    gpu_ram: int = 24564  # MB in REST (reference §1.3)
    dph_base: float = 0.40  # compute $/h
    storage_cost: float = 0.15  # $/GB/month
    min_bid: float = 0.20
    reliability2: float = 0.995
    inet_down: float = 800.0
    inet_up: float = 400.0
    cuda_max_good: float = 12.8
    driver_version: str = "560.35.03"
    verified: bool = True
    disk_space: float = 200.0
    score: float = 100.0
    geolocation: str = "Norway, NO"
    rented: bool = False
    #: the detour instances rented from this offer take (None: the normal path)
    detour: str | None = None
    #: scheduling fails on this machine: with cancel_unavail the create answers 410, without
    #: it a STOPPED (storage-billed) instance is left behind (reference §1.4)
    unschedulable: bool = False
    #: where a running instance from this offer is reachable over SSH (None: a generated one)
    ssh: tuple[str, int] | None = None

    def as_json(self, allocated_storage: float) -> dict[str, Any]:
        """The offer object as search returns it."""
        storage_dph = self.storage_cost * allocated_storage / HOURS_PER_MONTH
        return {
            "id": self.id,
            "ask_contract_id": self.id,
            "bundle_id": self.id,
            "machine_id": self.machine_id,
            "host_id": self.host_id,
            "gpu_name": self.gpu_name,
            "num_gpus": self.num_gpus,
            "gpu_ram": self.gpu_ram,
            "gpu_total_ram": self.gpu_ram * self.num_gpus,
            "dph_base": self.dph_base,
            "dph_total": round(self.dph_base + storage_dph, 6),
            "storage_cost": self.storage_cost,
            "storage_total_cost": round(storage_dph, 6),
            "min_bid": self.min_bid,
            "reliability": self.reliability2,
            "reliability2": self.reliability2,
            "score": self.score,
            "verification": "verified" if self.verified else "unverified",
            "verified": self.verified,
            "rentable": not self.rented,
            "rented": self.rented,
            "external": False,
            "disk_space": self.disk_space,
            "inet_down": self.inet_down,
            "inet_up": self.inet_up,
            "direct_port_count": 10,
            "geolocation": self.geolocation,
            "cuda_max_good": self.cuda_max_good,
            "driver_version": self.driver_version,
            "static_ip": False,
            "public_ipaddr": "203.0.113.7",
            "is_bid": False,
        }


@dataclass
class InstanceRecord:
    """One instance (a contract) and everything the ledger needs about it."""

    id: int
    offer_id: int | None
    machine_id: int
    host_id: int
    gpu_name: str
    num_gpus: int
    label: str | None
    env: dict[str, str]
    image: str
    disk: float
    onstart: str | None
    created_at: float
    compute_dph: float
    storage_dph: float
    timeline: list[tuple[float, Phase]]
    ssh: tuple[str, int]
    api_key: str
    foreign: bool = False
    runtype: str | None = None
    destroyed_at: float | None = None
    ssh_keys: list[str] = field(default_factory=list)
    body: dict[str, Any] = field(default_factory=dict)

    @property
    def alive(self) -> bool:
        """Not destroyed (or lost by the provider)."""
        return self.destroyed_at is None

    def phase_at(self, t: float) -> Phase:
        """The phase the instance is in at time ``t``."""
        current = self.timeline[0][1]
        for at, phase in self.timeline:
            if at <= t:
                current = phase
            else:
                break
        return current

    def spend(self, now: float) -> float:
        """Dollars billed from creation to destruction (or ``now``): storage in every phase
        but offline, compute only while running (reference §1.9)."""
        end = self.destroyed_at if self.destroyed_at is not None else now
        total = 0.0
        for i, (at, phase) in enumerate(self.timeline):
            start = max(at, self.created_at)
            stop = self.timeline[i + 1][0] if i + 1 < len(self.timeline) else end
            stop = min(stop, end)
            if stop <= start:
                continue
            rate = (self.storage_dph if phase.billed_storage else 0.0) + (
                self.compute_dph if phase.billed_compute else 0.0
            )
            total += rate * (stop - start) / 3600.0
        return total

    def as_json(self, now: float, ports_when_running: bool) -> dict[str, Any]:
        """The instance object as show/list return it."""
        ph = self.phase_at(now)
        running = ph.actual_status == "running"
        ssh_host, ssh_port = self.ssh
        ports = None
        if running and ports_when_running:
            ports = {"22/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(ssh_port)}]}
        return {
            "id": self.id,
            "machine_id": self.machine_id,
            "host_id": self.host_id,
            "actual_status": ph.actual_status,
            "intended_status": ph.intended_status,
            "cur_state": ph.cur_state,
            "next_state": ph.next_state,
            "status_msg": ph.status_msg,
            "label": self.label,
            "image_uuid": self.image,
            "image_args": [],
            "image_runtype": self.runtype or "ssh ssh_direc ssh_proxy",
            # [[k, v], ...]: the CLI converts it to a dict; "-p A:B" style keys are docker
            # options, not environment (reference §1.4: CLI parse_env)
            "extra_env": [[k, v] for k, v in self.env.items() if not k.startswith("-")],
            "onstart": self.onstart,
            "jupyter_token": "0" * 64,
            # reference §1.10.4: ssh_port/ports populated only once running
            "ssh_host": ssh_host if running else None,
            "ssh_port": ssh_port if running else None,
            "ssh_idx": "2",
            "public_ipaddr": "203.0.113.7",
            # reference §1.5: may carry trailing whitespace/newline
            "local_ipaddrs": "10.2.202.31 172.17.0.1 \n",
            "ports": ports,
            "start_date": self.created_at_epoch,
            "end_date": None,
            "uptime_mins": None,
            "num_gpus": self.num_gpus,
            "gpu_name": self.gpu_name,
            "gpu_ram": 24564,
            "gpu_util": 0.0 if running else None,
            "cpu_cores": 16,
            "cpu_ram": 64000,
            "disk_space": self.disk,
            "disk_usage": 0.0,
            "inet_up": 400.0,
            "inet_down": 800.0,
            "dph_base": self.compute_dph,
            "dph_total": round(self.compute_dph + self.storage_dph, 6),
            "storage_cost": round(self.storage_dph * HOURS_PER_MONTH / max(self.disk, 1), 6),
            "storage_total_cost": round(self.storage_dph, 6),
            "is_bid": False,
            "min_bid": None,
            "reliability2": 0.995,
            "verification": "verified",
            "rentable": True,
            "geolocation": "Norway, NO",
            "template_id": None,
            "template_hash_id": None,
            "credit_balance": None,
            "volume_info": None,
        }

    created_at_epoch: float = 0.0


@dataclass
class RequestRecord:
    """One request the double received (for assertions on what a client sent)."""

    method: str
    path: str
    endpoint: str
    query: dict[str, str]
    body: Any
    auth: str  # "bearer" | "query" | "none" | "bad" | "instance:<id>" (wave2: fleet-replicas)
    at: float  # real time.monotonic()
    status: int = 0


# --- faults -----------------------------------------------------------------------------


@dataclass
class Fault:
    """One injected misbehaviour."""

    kind: str
    seconds: float = 0.0


class Faults:
    """Queued and random faults per endpoint (``"*"``: any endpoint)."""

    def __init__(self) -> None:
        self._queue: dict[str, list[Fault]] = {}
        self._rates: dict[str, list[tuple[str, float, float]]] = {}
        self._rng = random.Random(0)
        self._lock = threading.Lock()

    def next(self, endpoint: str, kind: str, count: int = 1, *, seconds: float = 0.0) -> None:
        """The next ``count`` requests to ``endpoint`` misbehave as ``kind``."""
        _check(endpoint, kind)
        with self._lock:
            self._queue.setdefault(endpoint, []).extend(Fault(kind, seconds) for _ in range(count))

    def rate(
        self, endpoint: str, kind: str, p: float, *, seconds: float = 0.0, seed: int | None = None
    ) -> None:
        """Each request to ``endpoint`` misbehaves as ``kind`` with probability ``p``."""
        _check(endpoint, kind)
        with self._lock:
            if seed is not None:
                self._rng.seed(seed)
            self._rates.setdefault(endpoint, []).append((kind, p, seconds))

    def clear(self) -> None:
        """No more faults."""
        with self._lock:
            self._queue.clear()
            self._rates.clear()

    def pending(self, endpoint: str) -> int:
        """How many queued faults ``endpoint`` still has."""
        with self._lock:
            return len(self._queue.get(endpoint, []))

    def take(self, endpoint: str) -> Fault | None:
        """The fault this request suffers, if any (queued ones first)."""
        with self._lock:
            for key in (endpoint, "*"):
                queue = self._queue.get(key)
                if queue:
                    return queue.pop(0)
            for key in (endpoint, "*"):
                for kind, p, seconds in self._rates.get(key, []):
                    if self._rng.random() < p:
                        return Fault(kind, seconds)
        return None


def _check(endpoint: str, kind: str) -> None:
    if endpoint != "*" and endpoint not in ENDPOINTS:
        raise ValueError(f"unknown endpoint {endpoint!r}; one of {ENDPOINTS}")
    if kind not in FAULT_KINDS:
        raise ValueError(f"unknown fault kind {kind!r}; one of {FAULT_KINDS}")
    if kind in ("error_but_created", "no_such_ask") and endpoint != "create":
        raise ValueError(f"{kind} applies to the create endpoint only")


class _ApiError(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


def _error(status: int, error: str, msg: str, **extra: Any) -> _ApiError:
    # Generic error body shape (reference §1.2): {"success": false, "error": ..., "msg": ...}
    return _ApiError(status, {"success": False, "error": error, "msg": msg, **extra})


# --- query language -----------------------------------------------------------------------


def _compare(value: Any, op: str, operand: Any) -> bool:
    """One ``field: {op: operand}`` test, with SQL NULL semantics (NULL matches nothing)."""
    if op in ("in", "notin"):
        if not isinstance(operand, list):
            raise _error(400, "invalid_args", f"operator {op} needs a list")
        if value is None:
            return False
        return (value in operand) == (op == "in")
    if value is None or operand is None:
        return False
    try:
        if op == "eq":
            return value == operand
        if op == "neq":
            return value != operand
        if op == "gt":
            return value > operand
        if op == "gte":
            return value >= operand
        if op == "lt":
            return value < operand
        if op == "lte":
            return value <= operand
    except TypeError as exc:
        raise _error(400, "invalid_args", f"cannot compare {value!r} with {operand!r}") from exc
    raise _error(400, "invalid_args", f"unknown operator {op!r}; one of {', '.join(_OPS)}")


def _matches(row: Mapping[str, Any], filters: Mapping[str, Any], *, what: str) -> bool:
    for name, cond in filters.items():
        if not isinstance(cond, dict):
            cond = {"eq": cond}  # GUESS: a bare value is an equality test
        for op, operand in cond.items():
            value = row[name]
            if name == "label" and operand == "" and op in ("eq", "neq"):
                # "pass empty string to match unlabeled" (CLI show instances-v1 --label)
                unlabeled = value in (None, "")
                if unlabeled != (op == "eq"):
                    return False
                continue
            if not _compare(value, op, operand):
                return False
    return True


def _known_columns(filters: Mapping[str, Any], columns: frozenset[str], *, what: str) -> None:
    for name in filters:
        if name not in columns:
            # GUESS: the reference lists no answer for an unknown column; a 400 makes a
            # client's typo visible instead of silently matching everything.
            raise _error(400, "invalid_args", f"unknown {what} field {name!r}")


@functools.cache
def _offer_columns() -> frozenset[str]:
    return frozenset(OfferRecord(0, 0, 0).as_json(5.0))


@functools.cache
def _instance_columns() -> frozenset[str]:
    blank = InstanceRecord(
        0,
        None,
        0,
        0,
        "",
        1,
        None,
        {},
        "",
        10.0,
        None,
        0.0,
        0.0,
        0.0,
        [(0.0, SCHEDULING)],
        ("", 0),
        "",
    )
    return frozenset(blank.as_json(0.0, False))


def _encode_token(last_id: int) -> str:
    raw = json.dumps({"after_id": last_id}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str) -> int:
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        return int(data["after_id"])
    except (ValueError, KeyError, TypeError) as exc:
        raise _error(400, "invalid_token", "after_token is not a valid pagination token") from exc


def _json_param(request: web.Request, name: str, default: Any) -> Any:
    # Query args are JSON-encoded inside the query string (reference §1.1).
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise _error(400, "invalid_args", f"{name} is not valid JSON") from exc


# --- the double -----------------------------------------------------------------------------


class VastDouble(LoopbackServer):
    """The Vast.ai API on 127.0.0.1 with a status machine, a billing ledger and faults."""

    thread_name = "the Vast double"

    def __init__(
        self,
        *,
        api_key: str | None = None,
        manual_clock: bool = False,
        timing: Timing | None = None,
        min_interval: Mapping[str, float] | None = None,
        rate_limit_body: str = "text",
        page_limit: int = 25,
        ports_when_running: bool = False,
        ssh_endpoint: Callable[[InstanceRecord], tuple[str, int]] | None = None,
    ) -> None:
        self.api_key = api_key or secrets.token_hex(32)
        self.timing = timing or Timing()
        self.manual_clock = manual_clock
        #: real-time minimum seconds between two requests to one endpoint from one identity;
        #: closer requests get 429 (reference §1.2: limits are per endpoint and identity)
        self.min_interval: dict[str, float] = dict(min_interval or {})
        #: "text" or "json": the body of a rate-limit 429 (the real one is "often plain text")
        self.rate_limit_body = rate_limit_body
        self.page_limit = page_limit
        #: reference §1.10.4: "ports may be null even when running" (the default here)
        self.ports_when_running = ports_when_running
        #: where a running instance's SSH lives (tests point it at a real sshd)
        self.ssh_endpoint = ssh_endpoint
        self.faults = Faults()
        self.requests: list[RequestRecord] = []
        self.offers: dict[int, OfferRecord] = {}
        self.instances: dict[int, InstanceRecord] = {}
        #: the most API-created instances alive at the same time
        self.max_alive = 0
        #: detours for the next created instances, in order (before the offer's own)
        self.next_detours: list[str | None] = []
        self.host = "127.0.0.1"
        self.port = 0
        self._lock = threading.RLock()
        self._offset = 0.0
        self._t0 = time.monotonic()
        self._ids = itertools.count(21_000_001)
        self._offer_ids = itertools.count(9_100_001)
        self._last_seen: dict[tuple[str, str], float] = {}
        self._log_polls: dict[str, int] = {}
        self._runner: web.AppRunner | None = None

    # --- clock ---------------------------------------------------------------------------

    def now(self) -> float:
        """The double's clock, in seconds."""
        with self._lock:
            if self.manual_clock:
                return self._offset
            return time.monotonic() - self._t0 + self._offset

    def advance(self, seconds: float) -> None:
        """Move the double's clock forward (statuses progress, the ledger accrues)."""
        with self._lock:
            self._offset += seconds

    # --- catalogue and state, for tests -------------------------------------------------

    @property
    def url(self) -> str:
        """The base URL (what ``[provider] api_url`` should be)."""
        return f"http://{self.host}:{self.port}"

    def add_offer(self, **fields: Any) -> OfferRecord:
        """Add an ask to the catalogue; fields as :class:`OfferRecord` (ids are generated)."""
        with self._lock:
            oid = fields.pop("id", None) or next(self._offer_ids)
            machine = fields.pop("machine_id", None) or oid - 9_000_000
            host = fields.pop("host_id", None) or machine + 500_000
            offer = OfferRecord(id=oid, machine_id=machine, host_id=host, **fields)
            self.offers[oid] = offer
            return offer

    def add_offers(self, n: int, **fields: Any) -> list[OfferRecord]:
        """Add ``n`` offers alike (distinct machines)."""
        return [self.add_offer(**fields) for _ in range(n)]

    def add_foreign(
        self,
        *,
        label: str | None = None,
        env: Mapping[str, str] | None = None,
        status: str = "running",
    ) -> InstanceRecord:
        """An instance this account has that no pool of ours made (it must survive us)."""
        with self._lock:
            now = self.now()
            iid = next(self._ids)
            inst = InstanceRecord(
                id=iid,
                offer_id=None,
                machine_id=7000 + iid % 1000,
                host_id=8000,
                gpu_name="RTX 3090",
                num_gpus=1,
                label=label,
                env=dict(env or {}),
                image="someone/else:latest",
                disk=20.0,
                onstart=None,
                created_at=now,
                compute_dph=0.2,
                storage_dph=0.01,
                timeline=[(now, PHASES[status])],
                ssh=("ssh9.vast.ai", 10000 + iid % 50000),
                api_key=secrets.token_hex(32),
                foreign=True,
                created_at_epoch=time.time(),
            )
            self.instances[iid] = inst
            return inst

    def set_status(self, instance_id: int, status: str, *, msg: str | None = None) -> None:
        """Detour an instance now: from this moment it is in ``status`` (see PHASES)."""
        with self._lock:
            inst = self.instances[instance_id]
            now = self.now()
            phase = PHASES[status]
            if msg is not None:
                phase = Phase(**{**phase.__dict__, "status_msg": msg})
            inst.timeline = [(t, p) for t, p in inst.timeline if t <= now] + [(now, phase)]

    def set_ssh(self, instance_id: int, host: str, port: int) -> None:
        """Where this instance's SSH is reachable once it runs."""
        with self._lock:
            self.instances[instance_id].ssh = (host, port)

    def kill(self, instance_id: int) -> None:
        """The provider loses the instance: it vanishes (billing stops now)."""
        with self._lock:
            self._end(self.instances[instance_id])

    def live(self, *, include_foreign: bool = False) -> list[InstanceRecord]:
        """Instances that exist now."""
        with self._lock:
            return [
                i for i in self.instances.values() if i.alive and (include_foreign or not i.foreign)
            ]

    def status_of(self, instance_id: int) -> str | None:
        """The actual_status an instance reports now."""
        with self._lock:
            return self.instances[instance_id].phase_at(self.now()).actual_status

    def spend(self, instance_id: int | None = None, *, include_foreign: bool = False) -> float:
        """Dollars billed so far: one instance, or every API-created one."""
        with self._lock:
            now = self.now()
            if instance_id is not None:
                return self.instances[instance_id].spend(now)
            return sum(
                i.spend(now) for i in self.instances.values() if include_foreign or not i.foreign
            )

    def spend_rate(self, *, include_foreign: bool = False) -> float:
        """Dollars per hour billed right now over live instances."""
        with self._lock:
            now = self.now()
            rate = 0.0
            for i in self.live(include_foreign=include_foreign):
                ph = i.phase_at(now)
                rate += (i.storage_dph if ph.billed_storage else 0.0) + (
                    i.compute_dph if ph.billed_compute else 0.0
                )
            return rate

    def requests_to(self, endpoint: str) -> list[RequestRecord]:
        """The requests received by one endpoint (by name, see ENDPOINTS)."""
        with self._lock:
            return [r for r in self.requests if r.endpoint == endpoint]

    def wait_for_requests(self, endpoint: str, count: int = 1, timeout: float = 10.0) -> None:
        """Block until ``endpoint`` has received ``count`` requests (sync tests)."""
        end = time.monotonic() + timeout
        while len(self.requests_to(endpoint)) < count:
            if time.monotonic() > end:
                raise AssertionError(f"{endpoint} did not get {count} requests in {timeout} s")
            time.sleep(0.01)

    # --- internals -----------------------------------------------------------------------

    def _end(self, inst: InstanceRecord) -> None:
        if inst.destroyed_at is None:
            inst.destroyed_at = self.now()
        if inst.offer_id is not None and inst.offer_id in self.offers:
            # GUESS: a destroyed contract's machine is rentable again (it goes back to the
            # catalogue); the reference only says a rented offer leaves search.
            self.offers[inst.offer_id].rented = False

    def _count_alive(self) -> None:
        alive = sum(1 for i in self.instances.values() if i.alive and not i.foreign)
        self.max_alive = max(self.max_alive, alive)

    def _auth(self, request: web.Request) -> str:
        header = request.headers.get("Authorization", "")
        if header:
            if header.lower().startswith("bearer ") and header[7:].strip() == self.api_key:
                return "bearer"
            # (wave2: fleet-replicas) a per-instance key (CONTAINER_API_KEY) acts on its own
            # instance only ("can only start, stop, or destroy that specific instance")
            token = header[7:].strip() if header.lower().startswith("bearer ") else ""
            with self._lock:
                for inst in self.instances.values():
                    if token and inst.api_key == token:
                        return f"instance:{inst.id}"
            return "bad"
        if "api_key" in request.query:
            return "query" if request.query["api_key"] == self.api_key else "bad"
        return "none"

    def _rate_limited(self, endpoint: str, request: web.Request) -> bool:
        interval = self.min_interval.get(endpoint, 0.0)
        if interval <= 0:
            return False
        identity = request.headers.get("Authorization", "") + request.query.get("api_key", "")
        key = (endpoint, identity)
        now = time.monotonic()
        last = self._last_seen.get(key)
        if last is not None and now - last < interval:
            # GUESS: a refused request does not restart the interval (the "penalty" the
            # openapi yamls annotate is undisclosed, reference §1.2)
            return True
        self._last_seen[key] = now
        return False

    def _too_frequent(self, endpoint: str, threshold: float, as_json: bool) -> web.Response:
        msg = f"API requests too frequent endpoint threshold={threshold:g}"
        if not as_json:
            return web.Response(status=429, text=msg, content_type="text/plain")
        if endpoint == "destroy":
            body: dict[str, Any] = {"success": False, "error": "rate_limit_exceeded", "msg": msg}
        else:
            body = {"detail": msg}
        return web.json_response(body, status=429)

    @staticmethod
    def _abort(request: web.Request) -> web.Response:
        """Drop the TCP connection (RST): the client sees no answer."""
        transport = request.transport
        if transport is not None:
            with contextlib.suppress(Exception):
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                    )
            transport.abort()
        return web.Response(status=599)

    def _route(
        self, endpoint: str, handler: Callable[[web.Request, Any, Fault | None], Any]
    ) -> Callable[[web.Request], Any]:
        async def serve(request: web.Request) -> web.StreamResponse:
            body: Any = None
            if request.can_read_body:
                raw = await request.read()
                if raw:
                    try:
                        body = json.loads(raw)
                    except ValueError:
                        body = raw.decode("utf-8", "replace")
            rec = RequestRecord(
                request.method,
                request.path,
                endpoint,
                dict(request.query),
                body,
                self._auth(request),
                time.monotonic(),
            )
            with self._lock:
                self.requests.append(rec)
            resp = await self._serve(endpoint, handler, request, body, rec)
            rec.status = resp.status
            return resp

        return serve

    async def _serve(
        self,
        endpoint: str,
        handler: Callable[[web.Request, Any, Fault | None], Any],
        request: web.Request,
        body: Any,
        rec: RequestRecord,
    ) -> web.StreamResponse:
        if rec.auth.startswith("instance:"):  # (wave2: fleet-replicas)
            own = rec.auth.removeprefix("instance:")
            if endpoint not in ("destroy", "manage", "show") or request.match_info.get("id") != own:
                return web.json_response(
                    {"success": False, "error": "auth_error", "msg": "Invalid user key"},
                    status=401,
                )
        elif rec.auth not in ("bearer", "query"):
            # GUESS: the body of a 401 (the reference gives only the status)
            return web.json_response(
                {"success": False, "error": "auth_error", "msg": "Invalid user key"}, status=401
            )
        fault = self.faults.take(endpoint)
        if fault is not None:
            if fault.kind == "hang":
                await asyncio.sleep(fault.seconds)
            elif fault.kind.startswith("429"):
                return self._too_frequent(endpoint, 1.0, fault.kind == "429_json")
            elif fault.kind in ("500", "502", "503", "504"):
                # 5xx from a proxy in front of the API: sometimes HTML, here plain text
                return web.Response(status=int(fault.kind), text=f"{fault.kind} Server Error")
            elif fault.kind == "drop":
                return self._abort(request)
            elif fault.kind == "html":
                return web.Response(
                    text="<html><body>Service temporarily unavailable</body></html>",
                    content_type="text/html",
                )
        with self._lock:
            if self._rate_limited(endpoint, request):
                return self._too_frequent(
                    endpoint, self.min_interval[endpoint], self.rate_limit_body == "json"
                )
            try:
                result = handler(request, body, fault)
                status, payload = 200, result
            except _ApiError as err:
                status, payload = err.status, err.body
        if fault is not None and fault.kind == "lost":
            return self._abort(request)
        if fault is not None and fault.kind == "hang_after":
            await asyncio.sleep(fault.seconds)
        if isinstance(payload, web.StreamResponse):
            return payload
        return web.json_response(payload, status=status)

    # --- handlers (called under the lock) ------------------------------------------------

    def _search(self, request: web.Request, body: Any, fault: Fault | None) -> Any:
        if request.method == "PUT":  # the "--new" form: {"select_cols": [...], "q": {...}}
            if not isinstance(body, dict) or not isinstance(body.get("q", {}), dict):
                raise _error(400, "invalid_args", "body must be {'select_cols': [...], 'q': {...}}")
            query = dict(body.get("q") or {})
        else:
            if not isinstance(body, dict):
                raise _error(400, "invalid_args", "the body must be a JSON query object")
            query = dict(body)
        kind = query.get("type", "on-demand")
        if kind not in _SEARCH_TYPES:
            raise _error(400, "invalid_args", f"type must be one of {sorted(_SEARCH_TYPES)}")
        allocated = float(query.get("allocated_storage", 5.0))
        limit = int(query.get("limit", 64))  # GUESS: the server's default limit
        order = query.get("order", [["score", "desc"]])
        filters = {k: v for k, v in query.items() if k not in _SEARCH_TOP_LEVEL}
        _known_columns(filters, _offer_columns(), what="offer")
        rows = []
        for offer in self.offers.values():
            if offer.rented:
                continue  # rented asks leave the catalogue (reference §1.10.3)
            row = offer.as_json(allocated)
            if kind == "bid":
                row["dph_total"] = round(offer.min_bid + row["storage_total_cost"], 6)
            if _matches(row, filters, what="offer"):
                rows.append(row)
        for item in reversed(order if isinstance(order, list) else []):
            if not (isinstance(item, list) and len(item) == 2 and item[1] in ("asc", "desc")):
                raise _error(400, "invalid_args", "order is a list of [field, 'asc'|'desc']")
            name, direction = item
            rows.sort(
                key=lambda r, n=name: (r.get(n) is None, r.get(n)), reverse=direction == "desc"
            )
        return {"offers": rows[: max(0, limit)]}

    def _create(self, request: web.Request, body: Any, fault: Fault | None) -> Any:
        ask_id = int(request.match_info["id"])
        if not isinstance(body, dict):
            raise _error(400, "invalid_args", "error 400/3467: Invalid args: body must be JSON")
        self._validate_create(body, ask_id)
        cancel_unavail = bool(body.get("cancel_unavail"))
        offer = self.offers.get(ask_id)
        if fault is not None and fault.kind == "no_such_ask":
            offer = None
        if offer is None or offer.rented:
            if cancel_unavail:
                raise _error(
                    410,
                    "no_such_ask",
                    f"error 410/3603: no_such_ask Instance type by id {ask_id} is no longer "
                    "available.",
                    ask_id=ask_id,
                )
            raise _error(
                404,
                "no_such_ask",
                f"error 404/3603: no_such_ask Instance type by id {ask_id} is not available.",
                ask_id=ask_id,
            )
        if offer.unschedulable and cancel_unavail:
            # "Return error if scheduling fails (rather than creating a stopped instance)"
            raise _error(
                410,
                "no_such_ask",
                f"error 410/3603: no_such_ask Instance type by id {ask_id} is no longer available.",
                ask_id=ask_id,
            )
        stopped = offer.unschedulable or (fault is not None and fault.kind == "error_but_created")
        inst = self._new_instance(offer, body, stopped=stopped)
        if fault is not None and fault.kind == "error_but_created":
            # dstack: Vast "creates spot instances in the stopped state and returns an error
            # if the bid is insufficient"; the error body still carries new_contract.
            # GUESS: the error code and status of that answer.
            raise _error(
                400,
                "insufficient_bid",
                "error 400/3471: insufficient bid: instance created in the stopped state",
                new_contract=inst.id,
            )
        return {"success": True, "new_contract": inst.id, "instance_api_key": inst.api_key}

    @staticmethod
    def _validate_create(body: Mapping[str, Any], ask_id: int) -> None:
        """``create_instance.yaml`` x-input-validation (reference §1.4)."""

        def bad(msg: str) -> _ApiError:
            return _error(
                400, "invalid_args", f"error 400/3467: Invalid args: {msg}", ask_id=ask_id
            )

        image = body.get("image")
        if not isinstance(image, str) or not image or len(image) > 1024:
            raise bad("image must be a string of 1 to 1024 characters")
        onstart = body.get("onstart") or ""
        if not isinstance(onstart, str):
            raise bad("onstart must be a string")
        if len(onstart) > 4048:  # openapi.yaml: "gzip+base64 for longer scripts"
            raise bad("onstart is longer than 4048 characters")
        args_len = len(json.dumps(body.get("args") or "")) + len(body.get("args_str") or "")
        if args_len + len(onstart) > 4096:
            raise bad("args + args_str + onstart is longer than 4096 characters")
        label = body.get("label")
        if label is not None and (not isinstance(label, str) or len(label) > 256):
            raise bad("label must be a string of at most 256 characters")
        env = body.get("env") or {}
        if not isinstance(env, dict):
            raise bad("env must be an object")
        total = 0
        for k, v in env.items():
            if not isinstance(v, str) or len(k) > 256 or len(v) > 256:
                raise bad("env keys and values are strings of at most 256 characters")
            total += len(k) + len(v)
        if total > 32768:
            raise bad("env is larger than 32768 characters")
        disk = body.get("disk", 10)
        if not isinstance(disk, int | float) or disk < 8:
            raise bad("disk must be at least 8 (GB)")
        price = body.get("price")
        if price is not None and not (isinstance(price, int | float) and 0.001 <= price <= 128):
            raise bad("price must be between 0.001 and 128")

    def _new_instance(self, offer: OfferRecord, body: Mapping[str, Any], *, stopped: bool) -> Any:
        now = self.now()
        iid = next(self._ids)
        detour = self.next_detours.pop(0) if self.next_detours else offer.detour
        timeline = [(now, STOPPED)] if stopped else timeline_for(detour, now, self.timing)
        disk = float(body.get("disk", 10))
        inst = InstanceRecord(
            id=iid,
            offer_id=offer.id,
            machine_id=offer.machine_id,
            host_id=offer.host_id,
            gpu_name=offer.gpu_name,
            num_gpus=offer.num_gpus,
            label=body.get("label"),
            env=dict(body.get("env") or {}),
            image=body["image"],
            disk=disk,
            onstart=body.get("onstart"),
            created_at=now,
            compute_dph=offer.dph_base,
            storage_dph=offer.storage_cost * disk / HOURS_PER_MONTH,
            timeline=timeline,
            ssh=offer.ssh or (f"ssh{iid % 9 + 1}.vast.ai", 10000 + iid % 50000),
            api_key=secrets.token_hex(32),
            runtype=body.get("runtype"),
            body=dict(body),
            created_at_epoch=time.time(),
        )
        if self.ssh_endpoint is not None and offer.ssh is None:
            inst.ssh = self.ssh_endpoint(inst)
        offer.rented = True
        self.instances[iid] = inst
        self._count_alive()
        return inst

    def _rows(self) -> list[dict[str, Any]]:
        now = self.now()
        return [
            i.as_json(now, self.ports_when_running)
            for i in sorted(self.instances.values(), key=lambda i: i.id)
            if i.alive
        ]

    def _list_v1(self, request: web.Request, body: Any, fault: Fault | None) -> Any:
        filters = _json_param(request, "select_filters", {})
        order_by = _json_param(request, "order_by", [{"col": "id", "dir": "asc"}])
        select_cols = _json_param(request, "select_cols", ["*"])
        if not isinstance(filters, dict):
            raise _error(400, "invalid_args", "select_filters must be a JSON object")
        for name in filters:
            if name in _COMPUTED_COLUMNS:
                raise _error(400, "invalid_args", f"cannot filter on computed field {name!r}")
        _known_columns(filters, _instance_columns(), what="instance")
        try:
            limit = int(request.query.get("limit", self.page_limit))
        except ValueError as exc:
            raise _error(400, "invalid_args", "limit must be an integer") from exc
        if limit <= 0:
            limit = 5  # reference §1.5: "limit default 25, ≤0 → 5"
        limit = min(limit, self.page_limit)
        descending = False
        if order_by:
            first = order_by[0] if isinstance(order_by, list) else None
            if not isinstance(first, dict) or first.get("col") != "id":
                # GUESS (simplification): keyset paging only by id; the real API appends id as
                # a tiebreaker to any column. Our clients order by id.
                raise _error(400, "invalid_args", "the double orders by id only")
            descending = first.get("dir") == "desc"
        token = request.query.get("after_token")
        after = _decode_token(token) if token else None
        live = sorted(
            (i for i in self.instances.values() if i.alive), key=lambda i: i.id, reverse=descending
        )
        now = self.now()
        page: list[dict[str, Any]] = []
        more = False
        for inst in live:
            if after is not None and (inst.id >= after if descending else inst.id <= after):
                continue
            row = inst.as_json(now, self.ports_when_running)
            if not _matches(row, filters, what="instance"):
                continue
            if len(page) == limit:
                more = True
                break
            page.append(row)
        last_id = page[-1]["id"] if page else None
        if select_cols and select_cols != ["*"]:
            page = [{c: r.get(c) for c in select_cols} for r in page]  # unknown → null
        counts: dict[str, int] = {}
        for inst in live:  # GUESS: label_counts over the whole account, not the filter
            key = inst.label or ""
            counts[key] = counts.get(key, 0) + 1
        return {
            "success": True,
            "instances_found": len(page),  # GUESS: this page's count
            "total_instances": len(live),
            "label_counts": counts,
            "next_token": _encode_token(last_id) if more and last_id is not None else None,
            "instances": page,
        }

    def _list_v0(self, request: web.Request, body: Any, fault: Fault | None) -> Any:
        return {"instances": self._rows()}

    def _live_instance(self, request: web.Request) -> InstanceRecord | None:
        try:
            iid = int(request.match_info["id"])
        except ValueError:
            return None
        inst = self.instances.get(iid)
        return inst if inst is not None and inst.alive else None

    def _show(self, request: web.Request, body: Any, fault: Fault | None) -> Any:
        inst = self._live_instance(request)
        if inst is None:
            return {"instances": None}
        return {"instances": inst.as_json(self.now(), self.ports_when_running)}

    def _destroy(self, request: web.Request, body: Any, fault: Fault | None) -> Any:
        inst = self._live_instance(request)
        if inst is None:
            # dstack treats error == "no_such_instance" as already destroyed
            raise _error(
                404,
                "no_such_instance",
                f"Instance {request.match_info['id']} not found.",
            )
        self._end(inst)
        return {"success": True}

    def _manage(self, request: web.Request, body: Any, fault: Fault | None) -> Any:
        inst = self._live_instance(request)
        if inst is None:
            raise _error(404, "no_such_instance", f"Instance {request.match_info['id']} not found.")
        if not isinstance(body, dict):
            raise _error(400, "invalid_args", "body must be a JSON object")
        if "label" in body:
            label = body["label"]
            if not isinstance(label, str) or len(label) > 1024:
                raise _error(400, "label_too_long", "label is longer than 1024 characters")
            inst.label = label
        if "state" in body:
            state = body["state"]
            if state == "stopped":
                self.set_status(inst.id, "stopped")
            elif state == "running":
                # GUESS: a restart schedules again and then loads (it may sit in "scheduling")
                now = self.now()
                inst.timeline = [(t, p) for t, p in inst.timeline if t <= now] + [
                    (t, p) for t, p in timeline_for(None, now, self.timing)
                ]
            else:
                raise _error(400, "invalid_args", "state must be 'running' or 'stopped'")
        return {"success": True}

    def _logs(self, request: web.Request, body: Any, fault: Fault | None) -> Any:
        inst = self._live_instance(request)
        if inst is None:
            raise _error(404, "invalid_id", "no such instance")
        token = secrets.token_hex(8)
        self._log_polls[token] = 3  # 404 for a few polls, then 200 (reference §1.10.6)
        return {
            "success": True,
            "result_url": f"{self.url}/instance_logs/{token}.log",
            "msg": "logs requested",
        }

    async def _log_result(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        with self._lock:
            left = self._log_polls.get(token)
            if left is None:
                return web.Response(status=404, text="NoSuchKey")
            if left > 0:
                self._log_polls[token] = left - 1
                return web.Response(status=404, text="NoSuchKey")
        return web.Response(text="container log: started\n")

    def _attach_ssh(self, request: web.Request, body: Any, fault: Fault | None) -> Any:
        inst = self._live_instance(request)
        if inst is None:
            raise _error(404, "no_such_instance", f"Instance {request.match_info['id']} not found.")
        key = body.get("ssh_key") if isinstance(body, dict) else None
        if not isinstance(key, str) or not key.startswith(("ssh-", "ecdsa-")):
            raise _error(400, "invalid_args", "ssh_key must be an OpenSSH public key")
        inst.ssh_keys.append(key)
        return {"success": True, "msg": "ssh key attached"}

    # --- lifecycle -------------------------------------------------------------------------

    def _app(self) -> web.Application:
        app = web.Application()
        r = app.router
        slash = "{slash:/?}"
        iid = "{id:[^/]+}"
        r.add_route("POST", f"/api/v0/bundles{slash}", self._route("search", self._search))
        r.add_route("PUT", f"/api/v0/search/asks{slash}", self._route("search", self._search))
        r.add_route(
            "PUT", f"/api/v0/asks/{{id:[0-9]+}}{slash}", self._route("create", self._create)
        )
        r.add_route("GET", f"/api/v1/instances{slash}", self._route("list", self._list_v1))
        r.add_route("GET", f"/api/v0/instances{slash}", self._route("list_v0", self._list_v0))
        r.add_route(
            "PUT", f"/api/v0/instances/request_logs/{iid}{slash}", self._route("logs", self._logs)
        )
        r.add_route(
            "POST",
            f"/api/v0/instances/{iid}/ssh{slash}",
            self._route("attach_ssh", self._attach_ssh),
        )
        r.add_route("GET", f"/api/v0/instances/{iid}{slash}", self._route("show", self._show))
        r.add_route(
            "DELETE", f"/api/v0/instances/{iid}{slash}", self._route("destroy", self._destroy)
        )
        r.add_route("PUT", f"/api/v0/instances/{iid}{slash}", self._route("manage", self._manage))
        r.add_route("GET", "/instance_logs/{token}.log", self._log_result)
        return app

    async def start(self) -> None:
        """Serve on 127.0.0.1 (a free port)."""
        # handler_cancellation stays off (aiohttp's default): like a real server, a request
        # whose client went away is still carried out.
        self._runner = web.AppRunner(self._app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port or 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


def label_filter(labels: Iterable[str]) -> dict[str, Any]:
    """A v1 ``select_filters`` value that matches these exact labels (for tests)."""
    return {"label": {"in": list(labels)}}
