"""``POOL.toml``: the pool config (schema, defaults, errors with the file, field path and fix).

Relative paths are relative to the config file. ``[provider]`` is discriminated by ``kind``:
the Vast keys belong to ``kind = "vast"`` only, ``ssh`` takes hosts, ``local`` takes
``base_dir``/``ports``/``gpus`` (the schema is accepted; the provider comes later).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from comfyfleet.errors import UsageError
from comfyfleet.names import UnsafeName, escape_controls, plain_name
from comfyfleet.units import parse_duration

Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]
POOL_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?$")
ONSTART_LIMIT = 4096  # Vast: args + args_str + onstart ≤ 4096 (create_instance.yaml)


class PoolConfigError(UsageError):
    """POOL.toml does not parse or does not match the schema; nothing was created."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PoolSection(_Strict):
    """``[pool]``: sizes, caps, deadlines and what each instance runs."""

    name: str
    min_ready: int = Field(default=1, ge=0)
    max_ready: int | None = Field(default=None, ge=0)
    idle_timeout: Duration = 600.0
    max_instances: int = Field(default=4, ge=1)
    max_hourly_spend: float = Field(default=5.0, gt=0)
    provision_timeout: Duration = 2700.0
    lease_ttl: Duration = 1800.0
    on_release: Literal["destroy", "reprovision"] = "destroy"
    manifest: Path
    instance_root: str = "/workspace"
    secrets: list[str] = Field(default_factory=lambda: ["HF_TOKEN", "CIVITAI_TOKEN"])
    comfyui_port: int | Literal["auto"] = 8188
    dead_man_switch: Duration | None = None
    # Control-loop timing (not in DESIGN.md's example; defaults suit a real provider).
    tick: Duration = 10.0  # one reconcile pass (one paged list call) per tick
    create_grace: Duration = 120.0  # a create whose answer was lost may show up this late
    backoff: Duration = 30.0  # first pause after a failed create/boot; doubles per failure
    backoff_max: Duration = 900.0
    # (wave2: fleet-replicas) the leader's lease: renewed every ttl/4, taken over once expired
    leader_ttl: Duration = 4.0

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not POOL_NAME.fullmatch(v):
            raise ValueError(
                f"{escape_controls(v)!r} is not a pool name: use 1-40 of a-z, 0-9 and '-' "
                '(not at either end), e.g. "sdxl"'
            )
        return v

    @field_validator("secrets")
    @classmethod
    def _secrets(cls, v: list[str]) -> list[str]:
        for name in v:
            if not re.fullmatch(r"[A-Z_][A-Z0-9_]*", name):
                raise ValueError(f"{escape_controls(name)!r} is not an environment variable name")
        return v

    @field_validator("comfyui_port")
    @classmethod
    def _port(cls, v: int | str) -> int | str:
        if isinstance(v, int) and not 1 <= v <= 65535:
            raise ValueError('a port is 1-65535 or "auto"')
        return v

    @model_validator(mode="after")
    def _sizes(self) -> PoolSection:
        if self.min_ready > self.max_instances:
            raise ValueError(
                f"min_ready ({self.min_ready}) is greater than max_instances "
                f"({self.max_instances}): raise max_instances or lower min_ready"
            )
        if self.max_ready is not None and self.max_ready < self.min_ready:
            raise ValueError(
                f"max_ready ({self.max_ready}) is less than min_ready ({self.min_ready})"
            )
        if self.backoff_max < self.backoff:
            raise ValueError("backoff_max is shorter than backoff")
        if self.tick <= 0:
            raise ValueError("tick must be longer than 0s")
        if self.leader_ttl < 1:  # (wave2: fleet-replicas)
            raise ValueError("leader_ttl must be at least 1s (the lease is renewed every ttl/4)")
        return self

    @property
    def ready_cap(self) -> int:
        """``max_ready``, defaulting to ``min_ready`` (no spare ready instance kept idle)."""
        return self.max_ready if self.max_ready is not None else self.min_ready


class Offers(_Strict):
    """``[provider.offers]``: what an offer must have (the flat query of ``POST /bundles/``)."""

    gpu_names: list[str] = Field(default_factory=list)
    num_gpus: int = Field(default=1, ge=1)
    min_gpu_ram_gb: float | None = Field(default=None, ge=0)
    max_dph: float | None = Field(default=None, gt=0)
    min_reliability: float | None = Field(default=None, ge=0, le=1)
    min_inet_down_mbps: float | None = Field(default=None, ge=0)
    min_cuda: float | None = Field(default=None, ge=0)
    verified: bool = True


class VastProvider(_Strict):
    """``[provider] kind = "vast"`` (VAST_API_KEY comes from the environment)."""

    kind: Literal["vast"]
    api_url: str = "https://console.vast.ai"
    ssh_key: Path = Path("~/.ssh/id_ed25519")
    image: str = "vastai/pytorch:latest"
    disk_gb: int = Field(default=80, ge=8)  # Vast: disk ≥ 8
    onstart: str = Field(default="", max_length=ONSTART_LIMIT)
    env: dict[str, str] = Field(default_factory=dict)
    offers: Offers = Field(default_factory=Offers)

    @field_validator("api_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError(f"{escape_controls(v)!r} is not an http(s) URL")
        return v.rstrip("/")

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for key in v:
            if key == "COMFYFLEET_POOL":
                raise ValueError("COMFYFLEET_POOL is set by comfyfleet (the ownership marker)")
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise ValueError(f"{escape_controls(key)!r} is not an environment variable name")
        return v


class SshHost(_Strict):
    """One ``[[provider.hosts]]`` entry: a machine you own."""

    host: str
    port: int = Field(default=22, ge=1, le=65535)
    user: str = "root"
    key: Path | None = None

    @field_validator("host", "user")
    @classmethod
    def _plain(cls, v: str) -> str:
        try:
            return plain_name(v, what="value")
        except UnsafeName as exc:
            raise ValueError(str(exc)) from None


class SshProvider(_Strict):
    """``[provider] kind = "ssh"``: hosts only; never created or destroyed."""

    kind: Literal["ssh"]
    hosts: list[SshHost] = Field(min_length=1)
    known_hosts: Path | None = None

    @model_validator(mode="after")
    def _unique(self) -> SshProvider:
        seen = [(h.host, h.port) for h in self.hosts]
        if len(set(seen)) != len(seen):
            raise ValueError("two hosts have the same host and port")
        return self


class LocalProvider(_Strict):
    """``[provider] kind = "local"``: one machine, one ComfyUI per port (schema only for now)."""

    kind: Literal["local"]
    base_dir: Path
    ports: list[int] = Field(min_length=1)
    gpus: list[int] | None = None

    @model_validator(mode="after")
    def _shape(self) -> LocalProvider:
        if len(set(self.ports)) != len(self.ports):
            raise ValueError("ports: a port is listed twice")
        if self.gpus is not None and len(self.gpus) != len(self.ports):
            raise ValueError("gpus: give one GPU per port, or leave gpus out")
        return self


ProviderSection = Annotated[VastProvider | SshProvider | LocalProvider, Field(discriminator="kind")]


class StoreSection(_Strict):
    """``[store]``: ``sqlite:////abs/path`` (the default file beside the config) or ``postgresql://…``."""

    url: str = ""

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if v and not re.match(r"^(sqlite:///|postgresql(\+psycopg)?://)", v):
            raise ValueError(
                "use sqlite:////absolute/path.db or postgresql://user@host/db (or leave it empty)"
            )
        return v


class ApiSection(_Strict):
    """``[api]``: where the lease API listens (next issue)."""

    listen: str = "127.0.0.1:8780"


class PoolConfig(_Strict):
    """The whole of ``POOL.toml``; :attr:`base_dir` is the config file's directory."""

    pool: PoolSection
    provider: ProviderSection
    store: StoreSection = Field(default_factory=StoreSection)
    api: ApiSection = Field(default_factory=ApiSection)
    base_dir: Path = Field(default=Path("."), exclude=True)
    source: str = Field(default="POOL.toml", exclude=True)

    @property
    def name(self) -> str:
        return self.pool.name

    @property
    def manifest_path(self) -> Path:
        return self.resolve(self.pool.manifest)

    @property
    def store_url(self) -> str:
        """The store's URL; empty means ``<config dir>/<name>-pool.db``."""
        if self.store.url:
            return self.store.url
        return f"sqlite:///{(self.base_dir / f'{self.name}-pool.db').resolve()}"

    def resolve(self, path: Path) -> Path:
        """``path`` with ``~`` expanded, relative to the config file's directory."""
        path = path.expanduser()
        return path if path.is_absolute() else (self.base_dir / path).resolve()


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in {"vast", "ssh", "local"} and out == "provider":
            continue  # the discriminator's branch name is not a key the user wrote
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


_FIX = {
    "extra_forbidden": 'unknown key (check the spelling; the README\'s "The pool" lists every key)',
    "missing": "required key is missing",
    "union_tag_invalid": 'kind must be "vast", "ssh" or "local"',
    "union_tag_not_found": 'kind is missing: set kind = "vast", "ssh" or "local"',
}


def _describe(err: dict[str, Any]) -> str:
    text = _FIX.get(err["type"]) or err["msg"].removeprefix("Value error, ")
    return f"{_loc(tuple(err['loc']))}: {text}"


def parse_pool_config(data: Any, *, source: str = "POOL.toml", base_dir: Path) -> PoolConfig:
    """Validate parsed POOL.toml data; raise :class:`PoolConfigError` with field paths."""
    if not isinstance(data, dict):
        raise PoolConfigError(f"{source}: the config must be a table at the top level")
    for reserved in ("base_dir", "source"):
        if reserved in data:
            raise PoolConfigError(f"{source}: {reserved}: unknown key")
    try:
        config = PoolConfig.model_validate(
            {**data, "base_dir": base_dir.resolve(), "source": source}
        )
    except ValidationError as exc:
        lines = [_describe(e) for e in exc.errors()]
        raise PoolConfigError(
            f"{source}: " + (lines[0] if len(lines) == 1 else "\n  " + "\n  ".join(lines)),
            hint="fix the pool config and run the command again; nothing was created",
        ) from None
    return config


def load_pool_config(path: str | Path) -> PoolConfig:
    """Load and validate a ``POOL.toml`` file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PoolConfigError(f"{path}: no such file", hint="pass --config POOL.toml") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PoolConfigError(f"{path}: cannot read: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PoolConfigError(f"{path}: invalid TOML: {exc}", hint="fix the syntax") from None
    return parse_pool_config(data, source=str(path), base_dir=path.resolve().parent)
