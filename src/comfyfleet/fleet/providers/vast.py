"""The Vast.ai provider: the REST API as the official client uses it (reference/fleet.md §1).

=========================================  ===========================================
call                                       request
=========================================  ===========================================
:meth:`VastProvider.search_offers`         ``POST /api/v0/bundles/`` (flat query)
:meth:`VastProvider.create`                ``PUT /api/v0/asks/{id}/`` (``cancel_unavail``)
:meth:`VastProvider.list_instances`        ``GET /api/v1/instances/`` (pages of 25)
:meth:`VastProvider.get`                   ``GET /api/v0/instances/{id}/?owner=me``
:meth:`VastProvider.destroy`               ``DELETE /api/v0/instances/{id}/``
:meth:`VastProvider.attach_ssh_key`        ``POST /api/v0/instances/{id}/ssh/``
=========================================  ===========================================

Every request carries ``Authorization: Bearer <VAST_API_KEY>`` (never ``?api_key=``: keys stay
out of URLs). The API has no ``Retry-After`` and limits each endpoint to a minimum interval, so
each endpoint keeps its own interval and 429s are backed off with jitter; 5xx and dropped
answers are retried only where repeating the request is harmless (never a create).
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp

from comfyfleet import __version__
from comfyfleet.errors import UsageError
from comfyfleet.fleet.errors import (
    CreateFailed,
    OfferUnavailable,
    ProviderAuthError,
    ProviderError,
    ProviderRateLimited,
    ProviderUnavailable,
    ProviderUnreachable,
)
from comfyfleet.fleet.providers.base import (
    LABEL_PREFIX,
    POOL_ENV,
    Created,
    Health,
    Offer,
    ProviderInstance,
    SshEndpoint,
)
from comfyfleet.fleet.providers.blocklist import Blocklist
from comfyfleet.names import escape_controls
from comfyfleet.redact import redact_text
from comfyfleet.retry import backoff

#: seconds between two requests to one endpoint. Vast's openapi files annotate thresholds
#: (create 4.5, show 2.0, list 1.0, destroy 3.0, search 10/min) whose unit is undisclosed
#: (reference §1.2), so these are modest floors; 429s are backed off on top of them.
DEFAULT_MIN_INTERVAL: dict[str, float] = {
    "search": 1.0,
    "create": 0.5,
    "list": 0.2,
    "show": 0.2,
    "destroy": 0.2,
    "attach_ssh": 0.2,
}
#: the most time one call spends retrying 429/5xx before it raises
DEFAULT_CALL_BUDGET = 20.0
#: Vast caps v1 pages at 25 rows (reference §1.5)
PAGE_LIMIT = 25
#: attempts to connect before a call gives up (connection refused, DNS, connect timeout)
CONNECT_ATTEMPTS = 3
#: a listing longer than this many pages is refused rather than followed forever
MAX_PAGES = 2000
#: Vast's onstart limit (openapi.yaml: 4048 characters)
ONSTART_MAX = 4048

_PUBLIC_KEY = re.compile(
    r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com|"
    r"sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/=]+$"
)
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
_OCI = "oci runtime create failed"

#: Vast actual_status → our normalised status. ``null`` is "being provisioned"; rebooting and
#: restarting are transient; frozen (paused, GPU billed) is nothing a pool asks for.
_STATUS = {
    None: "created",
    "created": "created",
    "loading": "loading",
    "rebooting": "loading",
    "restarting": "loading",
    "running": "running",
    "stopped": "stopped",
    "frozen": "stopped",
    "exited": "exited",
    "offline": "offline",
    "unknown": "unknown",
}


@dataclass(frozen=True)
class _Answer:
    status: int
    data: Any  # parsed JSON, or the text when the body is not JSON

    @property
    def ok(self) -> bool:
        """A 2xx JSON answer that does not say ``"success": false``."""
        return 200 <= self.status < 300 and self.field("success") is not False

    def field(self, name: str) -> Any:
        return self.data.get(name) if isinstance(self.data, dict) else None

    def says(self, code: str) -> bool:
        """Whether the answer's error code (or message) is ``code``."""
        if not isinstance(self.data, dict):
            return code in str(self.data)
        error = self.data.get("error")
        msg = self.data.get("msg") or self.data.get("message") or ""
        return error == code or code in str(msg)


def classify_status(
    inst: ProviderInstance,
) -> tuple[Literal["booting", "ready_for_ssh", "failed"], str]:
    """Whether a Vast instance is still booting, ready to provision over SSH, or never will be.

    Fails fast, as Vast's docs and dstack do: exited, unknown (no heartbeat), offline, created
    with an OCI error, stopped (all-stopped = outbid). Everything pending — null, created,
    loading, rebooting, a status this code does not know — is "booting": the caller's
    deadline (``provision_timeout``) bounds it.
    """
    raw = inst.raw.get("actual_status") if inst.raw else inst.status
    msg = inst.status_msg
    if inst.status == "running":
        if inst.ssh is not None:
            return "ready_for_ssh", f"running, SSH at {inst.ssh.host}:{inst.ssh.port}"
        return "booting", "running, waiting for an SSH endpoint"
    if inst.status == "exited":
        return "failed", f"the container exited ({msg or 'no message'})"
    if inst.status == "unknown":
        return "failed", "the host sends no heartbeat (status unknown)"
    if inst.status == "offline":
        return "failed", "the host is offline"
    if inst.status == "stopped":
        states = [inst.raw.get(k) for k in ("cur_state", "intended_status", "next_state")]
        if states == ["stopped"] * 3:
            return "failed", "stopped by the provider (outbid or interrupted)"
        return "failed", f"the instance is {raw or 'stopped'} ({msg or 'no message'})"
    if inst.status == "created" and _OCI in msg.lower():
        return "failed", f"the container cannot start: {msg}"
    if raw not in _STATUS:
        return "booting", f"status {escape_controls(str(raw))!r} (unrecognised; deadline applies)"
    return "booting", f"{raw or 'scheduling'}{': ' + msg if msg else ''}"


def offer_query(offers: Mapping[str, Any], *, disk_gb: int) -> dict[str, Any]:
    """The flat ``POST /bundles/`` query for a ``[provider.offers]`` table (reference §1.3)."""
    q: dict[str, Any] = {
        # the CLI's defaults: only rentable, unrented, non-external asks
        "external": {"eq": False},
        "rentable": {"eq": True},
        "rented": {"eq": False},
        "num_gpus": {"eq": int(offers.get("num_gpus") or 1)},
        # machines with room for our disk; dph_total is priced at it (allocated_storage)
        "disk_space": {"gte": disk_gb},
        "order": [["score", "desc"]],
        "type": "on-demand",
        "limit": 100,
        "allocated_storage": float(disk_gb),
    }
    if offers.get("verified", True):
        q["verified"] = {"eq": True}
    if offers.get("gpu_names"):
        q["gpu_name"] = {"in": list(offers["gpu_names"])}
    if offers.get("min_gpu_ram_gb") is not None:
        q["gpu_ram"] = {"gte": float(offers["min_gpu_ram_gb"]) * 1000}  # MB in REST
    if offers.get("max_dph") is not None:
        q["dph_total"] = {"lte": float(offers["max_dph"])}
    if offers.get("min_reliability") is not None:
        q["reliability"] = {"gte": float(offers["min_reliability"])}
    if offers.get("min_inet_down_mbps") is not None:
        q["inet_down"] = {"gte": float(offers["min_inet_down_mbps"])}
    if offers.get("min_cuda") is not None:
        q["cuda_max_good"] = {"gte": float(offers["min_cuda"])}
    return q


def key_onstart(ssh_public_key: str, onstart: str) -> str:
    """The onstart script: authorise the pool's key, keep SSH out of tmux, then the user's part.

    The official client has no create-time key field (account keys reach new instances, and
    ``POST /instances/{id}/ssh/`` attaches one later), so the key goes in by the container's
    own start script — the one path that needs no second call.
    """
    key = " ".join(ssh_public_key.split()[:2])
    if not _PUBLIC_KEY.match(key):
        raise UsageError(
            "the pool's SSH public key is not an OpenSSH public key line",
            hint="point [provider] ssh_key at a private key whose .pub file is 'ssh-ed25519 AAAA…'",
        )
    lines = [
        "mkdir -p ~/.ssh && chmod 700 ~/.ssh",
        f"grep -qxF {shlex.quote(key)} ~/.ssh/authorized_keys 2>/dev/null || "
        f"echo {shlex.quote(key)} >> ~/.ssh/authorized_keys",
        "chmod 600 ~/.ssh/authorized_keys",
        "touch ~/.no_auto_tmux",  # SSH sessions land in tmux by default (reference §1.8)
    ]
    script = "\n".join(lines) + ("\n" + onstart if onstart else "")
    if len(script) > ONSTART_MAX:
        raise UsageError(
            f"[provider] onstart plus the SSH key set-up is {len(script)} characters; "
            f"Vast accepts {ONSTART_MAX}",
            hint=f"shorten onstart to at most {ONSTART_MAX - len(script) + len(onstart)} "
            "characters (or gzip+base64 it)",
        )
    return script


class VastProvider:
    """Rent, list and destroy Vast.ai instances for one pool."""

    kind = "vast"

    def __init__(
        self,
        api_url: str,
        api_key: str,
        *,
        pool: str,
        offers: Mapping[str, Any] | Any,
        image: str,
        disk_gb: int,
        min_interval: Mapping[str, float] | None = None,
        clock: Callable[[], float] = time.monotonic,
        call_budget: float = DEFAULT_CALL_BUDGET,
        request_timeout: float = 30.0,
        blocklist: Blocklist | None = None,
        page_limit: int = PAGE_LIMIT,
    ) -> None:
        if not api_key:
            raise ProviderAuthError(
                "VAST_API_KEY is not set",
                hint="export VAST_API_KEY=<your key from the Vast console>",
            )
        self.api_url = api_url.rstrip("/")
        self._key = api_key
        self.pool = pool
        self.offers = dict(offers.model_dump() if hasattr(offers, "model_dump") else offers)
        self.image = image
        self.disk_gb = disk_gb
        #: seconds between two requests per endpoint; a given mapping replaces the defaults
        #: (an endpoint it leaves out has no floor)
        self.min_interval = dict(DEFAULT_MIN_INTERVAL if min_interval is None else min_interval)
        self.clock = clock
        self.call_budget = call_budget
        self.request_timeout = request_timeout
        self.blocklist = blocklist or Blocklist(clock=clock)
        #: rows asked per listing page (Vast serves at most 25; the benchmark's double, more)
        self.page_limit = page_limit
        self._session: aiohttp.ClientSession | None = None
        self._gates: dict[str, asyncio.Lock] = {}
        self._next_allowed: dict[str, float] = {}

    # --- the interface -------------------------------------------------------------------

    async def search_offers(self) -> list[Offer]:
        """Offers matching ``[provider.offers]``, Vast's order, blocked machines left out."""
        ans = await self._call("search", "POST", "/api/v0/bundles/", body=self._query())
        self._expect_ok(ans, "search offers")
        rows = ans.field("offers")
        if not isinstance(rows, list):
            raise ProviderError("Vast answered an offer search without an offer list")
        max_dph = self.offers.get("max_dph")
        found = []
        for row in rows:
            offer = _offer(row)
            if offer is None or row.get("rented") is True:
                continue  # malformed, or taken (the CLI re-checks `rented` client-side too)
            if max_dph is not None and offer.dph > float(max_dph):
                continue  # the catalogue is cached: never trust a price cap to the server
            if self.blocklist.is_blocked(offer.machine_id):
                continue
            found.append(offer)
        return found

    async def create(
        self,
        offer: Offer,
        *,
        label: str,
        env: Mapping[str, str],
        onstart: str,
        ssh_public_key: str,
    ) -> Created:
        """Rent ``offer``. See :class:`~comfyfleet.fleet.providers.base.Provider` for what a
        failure may have left behind."""
        if not offer.offer_id.isdigit():
            raise OfferUnavailable(
                f"offer id {escape_controls(offer.offer_id)!r} is not a Vast ask"
            )
        body = {
            "client_id": "me",
            "image": self.image,
            "env": {**env, POOL_ENV: self.pool},
            "price": None,
            "disk": self.disk_gb,
            "label": label,
            "extra": None,
            "onstart": key_onstart(ssh_public_key, onstart),
            "image_login": None,
            "python_utf8": False,
            "lang_utf8": False,
            "use_jupyter_lab": False,
            "jupyter_dir": None,
            "force": False,
            # error out when scheduling fails instead of leaving a stopped, billed instance
            "cancel_unavail": True,
            "template_hash_id": None,
            "user": None,
            "runtype": "ssh_direc ssh_proxy",
        }
        ans = await self._call("create", "PUT", f"/api/v0/asks/{offer.offer_id}/", body=body)
        contract = ans.field("new_contract")
        made = (
            str(contract) if isinstance(contract, int | str) and str(contract).isdigit() else None
        )
        if ans.ok and made:
            key = ans.field("instance_api_key")
            return Created(made, key if isinstance(key, str) else None)
        if made:
            # dstack: an error can still name the instance it made (a stopped spot instance
            # with an insufficient bid); it exists and bills — the caller destroys it
            raise CreateFailed(
                f"Vast answered create on offer {offer.offer_id} with an error, yet made "
                f"instance {made}: {self._describe(ans)}",
                hint="the instance is tracked and destroyed",
                provider_id=made,
            )
        if ans.says("no_such_ask") or ans.status == 410:
            # (a bare 404 without the code may be a wrong api_url, not a taken offer)
            raise OfferUnavailable(
                f"offer {offer.offer_id} is no longer available ({self._describe(ans)})",
                hint="the next offer is tried",
            )
        self._raise_auth(ans)
        if ans.status >= 500:
            raise ProviderUnavailable(
                f"Vast answered create with {self._describe(ans)}; it may have created the "
                "instance",
                hint="resolved by its label on the next listing",
            )
        raise CreateFailed(
            f"Vast refused create on offer {offer.offer_id}: {self._describe(ans)}",
            hint="check [provider] image, disk_gb, onstart and env",
        )

    async def list_instances(self) -> list[ProviderInstance]:
        """Every instance labelled ``comfyfleet-…``, one paged listing (pages of 25)."""
        # Vast's filter operators have no prefix match, and string ranges would depend on the
        # server's collation (unverified), so the server drops only unlabelled instances and
        # the prefix is matched here.
        params: dict[str, Any] = {
            "select_filters": {"label": {"neq": ""}},
            "order_by": [{"col": "id", "dir": "asc"}],
            "limit": self.page_limit,
        }
        found: list[ProviderInstance] = []
        seen_tokens: set[str] = set()
        for _ in range(MAX_PAGES):
            ans = await self._call("list", "GET", "/api/v1/instances/", params=params)
            self._expect_ok(ans, "list instances")
            rows = ans.field("instances")
            if not isinstance(rows, list):
                raise ProviderError("Vast answered the instance listing without an instance list")
            for row in rows:
                inst = _instance(row)
                if inst is not None and inst.label and inst.label.startswith(LABEL_PREFIX):
                    found.append(inst)
            token = ans.field("next_token")
            if not token:
                return found
            if not isinstance(token, str) or token in seen_tokens:
                raise ProviderError("Vast's instance listing repeats a page token; not trusted")
            seen_tokens.add(token)
            params["after_token"] = token
        raise ProviderError(f"Vast's instance listing has more than {MAX_PAGES} pages")

    async def get(self, provider_id: str) -> ProviderInstance | None:
        """One instance; ``None`` when Vast answers ``{"instances": null}`` (gone)."""
        iid = _instance_id(provider_id)
        ans = await self._call("show", "GET", f"/api/v0/instances/{iid}/", params={"owner": "me"})
        self._expect_ok(ans, f"show instance {iid}")
        if not isinstance(ans.data, dict) or "instances" not in ans.data:
            raise ProviderError(f"Vast answered show instance {iid} without an 'instances' key")
        row = ans.data["instances"]
        if row is None:
            return None
        inst = _instance(row)
        if inst is None:
            raise ProviderError(f"Vast answered show instance {iid} with a malformed record")
        return inst

    async def destroy(self, provider_id: str, *, label: str | None = None) -> None:
        """Destroy the instance; ``no_such_instance`` (already gone) is success.

        ``label`` is accepted for the interface and not needed: Vast never reuses an id."""
        iid = _instance_id(provider_id)
        ans = await self._call("destroy", "DELETE", f"/api/v0/instances/{iid}/", body={})
        if ans.ok:
            return
        if ans.says("no_such_instance") or (ans.status == 404 and ans.says("not_found")):
            return  # already gone (dstack treats it so): destroy is idempotent
        self._raise_auth(ans)
        raise ProviderError(f"Vast refused to destroy instance {iid}: {self._describe(ans)}")

    async def attach_ssh_key(self, provider_id: str, ssh_public_key: str) -> None:
        """Authorise a key on a running instance (``POST /instances/{id}/ssh/``); idempotent."""
        iid = _instance_id(provider_id)
        key = " ".join(ssh_public_key.split()[:2])
        ans = await self._call(
            "attach_ssh", "POST", f"/api/v0/instances/{iid}/ssh/", body={"ssh_key": key}
        )
        if ans.ok or ans.says("already associated"):
            return
        self._expect_ok(ans, f"attach an SSH key to instance {iid}")

    def health(self, inst: ProviderInstance) -> tuple[Health, str]:
        """``booting`` / ``reachable`` / ``failed`` with a reason (see :func:`classify_status`)."""
        verdict, reason = classify_status(inst)
        return ("reachable" if verdict == "ready_for_ssh" else verdict), reason

    def block(self, machine_id: str, reason: str) -> None:
        """Keep ``machine_id`` out of search for a while (doubling per repeat, decaying)."""
        if machine_id:
            self.blocklist.block(machine_id, reason)

    async def aclose(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- HTTP ----------------------------------------------------------------------------

    def _query(self) -> dict[str, Any]:
        return offer_query(self.offers, disk_gb=self.disk_gb)

    def _session_for(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers={
                    "Authorization": f"Bearer {self._key}",
                    "User-Agent": f"comfyfleet/{__version__}",
                    "Accept": "application/json",
                },
                timeout=aiohttp.ClientTimeout(
                    total=self.request_timeout, connect=min(10.0, self.request_timeout)
                ),
            )
            # aiohttp re-sends a PUT or DELETE once, silently, when the connection drops
            # (it counts them as idempotent). A create is not: a second send could rent a
            # second machine. Every retry is decided below, where it is known to be harmless.
            self._session._retry_connection = False
        return self._session

    async def _call(
        self,
        endpoint: str,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
    ) -> _Answer:
        """One API call with the endpoint's interval, bounded retries and error mapping.

        Retried: 429 (always: the limiter refused before acting), connection failures before
        the request was sent, and — except for create — 5xx, timeouts and dropped answers.
        Returns any other answer, including 4xx, for the caller to interpret.
        """
        url = self.api_url + path
        query = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (params or {}).items()}
        repeatable = endpoint != "create"
        deadline = time.monotonic() + self.call_budget  # real time, whatever self.clock is
        attempt = 0
        connect_failures = 0
        last: ProviderError
        while True:
            try:
                async with self._gate(endpoint):
                    status, data = await self._send(method, url, query, body)
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                # not connected: the request was never sent, so retrying is harmless — but a
                # wrong URL or certificate must fail start-up in seconds, so only briefly
                last = ProviderUnreachable(
                    f"cannot reach the Vast API at {self.api_url}: "
                    f"{self._clean(str(exc) or type(exc).__name__)}",
                    hint="check [provider] api_url and the network (DNS, proxy, TLS)",
                )
                connect_failures += 1
                permanent = isinstance(
                    exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError
                )
                if permanent or connect_failures >= CONNECT_ATTEMPTS:
                    raise last from None
            except (aiohttp.ClientError, TimeoutError) as exc:
                what = "timed out" if isinstance(exc, TimeoutError) else "dropped the connection"
                last = ProviderUnavailable(
                    f"the Vast API {what} during {method} {path}"
                    + ("" if repeatable else "; the create may have happened"),
                    hint="retried on the next tick",
                )
                if not repeatable:
                    raise last from exc
            else:
                ans = _Answer(status, data)
                if status == 429:
                    last = ProviderRateLimited(
                        f"Vast kept answering 429 (too frequent) on {method} {path}",
                        hint="retried on the next tick; fewer pools per API key helps",
                    )
                    self._slow_down(endpoint, attempt)
                elif status >= 500 and repeatable:
                    last = ProviderUnavailable(
                        f"Vast kept failing {method} {path}: {self._describe(ans)}",
                        hint="the provider is having trouble; retried on the next tick",
                    )
                elif status == 200 and not isinstance(data, dict):
                    # not the API talking (an HTML page from a proxy): like a 5xx, except that
                    # for a create we cannot know what happened behind it
                    last = ProviderUnavailable(
                        f"the Vast API answered {method} {path} with something other than JSON"
                        + ("" if repeatable else "; the create may have happened"),
                        hint="check [provider] api_url (a proxy or portal in the way?)",
                    )
                    if not repeatable:
                        raise last
                else:
                    return ans
            attempt += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise last
            pause = max(
                backoff(attempt - 1, base=0.2, cap=5.0), self.min_interval.get(endpoint, 0.0)
            )
            await asyncio.sleep(min(pause, remaining))

    async def _send(
        self, method: str, url: str, query: Mapping[str, str], body: Any
    ) -> tuple[int, Any]:
        session = self._session_for()
        async with session.request(method, url, params=query or None, json=body) as resp:
            raw = await resp.read()
        text = raw.decode("utf-8", "replace")
        try:
            return resp.status, json.loads(text) if text else None
        except ValueError:
            return resp.status, text  # 429s are "often plain text"

    def _gate(self, endpoint: str) -> _Gate:
        lock = self._gates.setdefault(endpoint, asyncio.Lock())
        return _Gate(self, endpoint, lock)

    def _slow_down(self, endpoint: str, attempt: int) -> None:
        # No Retry-After: widen this endpoint's gap for everyone calling it
        gap = max(self.min_interval.get(endpoint, 0.0), 0.15 * 1.5**attempt)
        self._next_allowed[endpoint] = max(
            self._next_allowed.get(endpoint, 0.0), time.monotonic() + gap
        )

    # --- answers -------------------------------------------------------------------------

    def _clean(self, text: str) -> str:
        """Server text made safe to print: no key, no control characters, bounded."""
        text = redact_text(text, extra=[self._key])
        text = escape_controls(text)
        return text if len(text) <= 300 else text[:300] + "…"

    def _describe(self, ans: _Answer) -> str:
        if isinstance(ans.data, dict):
            parts = [
                str(ans.data.get(k))
                for k in ("error", "msg", "message", "detail")
                if ans.data.get(k)
            ]
            return f"HTTP {ans.status} " + self._clean(": ".join(parts) or "")
        return f"HTTP {ans.status} " + self._clean(str(ans.data or ""))

    def _raise_auth(self, ans: _Answer) -> None:
        if ans.status in (401, 403):
            raise ProviderAuthError(
                f"Vast refused the API key ({self._describe(ans)})",
                hint="check VAST_API_KEY (a key with instance read/write permission)",
            )

    def _expect_ok(self, ans: _Answer, what: str) -> None:
        if ans.ok:
            return
        self._raise_auth(ans)
        raise ProviderError(f"Vast refused to {what}: {self._describe(ans)}")


class _Gate:
    """Serialises one endpoint's requests and spaces them by its minimum interval."""

    def __init__(self, provider: VastProvider, endpoint: str, lock: asyncio.Lock) -> None:
        self.p = provider
        self.endpoint = endpoint
        self.lock = lock

    async def __aenter__(self) -> None:
        await self.lock.acquire()
        try:
            wait = self.p._next_allowed.get(self.endpoint, 0.0) - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        except BaseException:
            self.lock.release()
            raise

    async def __aexit__(self, *exc: object) -> None:
        interval = self.p.min_interval.get(self.endpoint, 0.0)
        self.p._next_allowed[self.endpoint] = max(
            self.p._next_allowed.get(self.endpoint, 0.0), time.monotonic() + interval
        )
        self.lock.release()


# --- records -------------------------------------------------------------------------------


def _instance_id(provider_id: str) -> str:
    if not isinstance(provider_id, str) or not provider_id.isdigit():
        raise ProviderError(f"{escape_controls(str(provider_id))!r} is not a Vast instance id")
    return provider_id


def _number(value: Any, default: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return float(value)


def _offer(row: Any) -> Offer | None:
    """An offer object → :class:`Offer`; None when it lacks what a create needs."""
    if not isinstance(row, dict):
        return None
    oid, machine = row.get("id"), row.get("machine_id")
    if not isinstance(oid, int) or isinstance(oid, bool) or not isinstance(machine, int):
        return None
    return Offer(
        offer_id=str(oid),
        machine_id=str(machine),
        gpu_name=escape_controls(str(row.get("gpu_name") or "")),
        num_gpus=int(_number(row.get("num_gpus"), 1)),
        dph=_number(row.get("dph_total")),
        raw=row,
    )


def _env_value(extra_env: Any, name: str) -> str | None:
    """``extra_env`` is ``[[k, v], ...]`` from the API (the CLI turns it into a dict)."""
    if isinstance(extra_env, dict):
        value = extra_env.get(name)
        return value if isinstance(value, str) else None
    if isinstance(extra_env, list):
        for pair in extra_env:
            if isinstance(pair, list | tuple) and len(pair) == 2 and pair[0] == name:
                return pair[1] if isinstance(pair[1], str) else None
    return None


def _ssh(row: Mapping[str, Any]) -> SshEndpoint | None:
    """The proxy endpoint ``ssh_host:ssh_port`` once running (SkyPilot: the gateway is the only
    reachable path; ``ports["22/tcp"]`` may be missing)."""
    host, port = row.get("ssh_host"), row.get("ssh_port")
    if isinstance(host, str):
        host = host.strip()
    if isinstance(port, str) and port.strip().isdigit():
        port = int(port)
    if not isinstance(host, str) or not _HOSTNAME.match(host):
        return None
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        return None
    return SshEndpoint(host=host, port=port, user="root")


def _instance(row: Any) -> ProviderInstance | None:
    """An instance object → :class:`ProviderInstance`; None when it has no usable id."""
    if not isinstance(row, dict):
        return None
    iid = row.get("id")
    if not isinstance(iid, int) or isinstance(iid, bool):
        return None
    raw_status = row.get("actual_status")
    status = (
        _STATUS.get(raw_status, "loading")
        if raw_status is None or isinstance(raw_status, str)
        else "loading"
    )
    label = row.get("label")
    machine = row.get("machine_id")
    msg = row.get("status_msg")
    return ProviderInstance(
        provider_id=str(iid),
        label=label if isinstance(label, str) else None,
        pool_marker=_env_value(row.get("extra_env"), POOL_ENV),
        status=status,
        status_msg=escape_controls(msg.strip())[:500] if isinstance(msg, str) else "",
        ssh=_ssh(row) if status == "running" else None,
        dph=_number(row.get("dph_total")),
        machine_id=str(machine) if isinstance(machine, int | str) and machine != "" else None,
        gpu_name=escape_controls(str(row.get("gpu_name") or "")),
        raw=row,
    )
