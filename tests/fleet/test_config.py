"""POOL.toml: the schema, its defaults, and an error with the file, field path and fix."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from comfyfleet.fleet.config import (
    LocalProvider,
    PoolConfigError,
    SshProvider,
    VastProvider,
    load_pool_config,
)

VAST = """
[pool]
name = "sdxl"
min_ready = 2
max_ready = 4
idle_timeout = "10m"
max_instances = 6
max_hourly_spend = 3.0
provision_timeout = "45m"
manifest = "manifest.toml"

[provider]
kind = "vast"
api_url = "https://console.vast.ai/"
ssh_key = "keys/id_ed25519"
disk_gb = 80
env = { MODE = "warm" }
[provider.offers]
gpu_names = ["RTX 4090", "RTX 3090"]
max_dph = 0.6
min_reliability = 0.98
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "POOL.toml"
    path.write_text(textwrap.dedent(text))
    return path


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(PoolConfigError) as info:
        load_pool_config(write(tmp_path, text))
    assert info.value.exit_code == 2
    return str(info.value)


def test_design_example_loads_with_durations_and_relative_paths(tmp_path: Path) -> None:
    cfg = load_pool_config(write(tmp_path, VAST))
    assert cfg.pool.idle_timeout == 600 and cfg.pool.provision_timeout == 2700
    assert isinstance(cfg.provider, VastProvider)
    assert cfg.provider.api_url == "https://console.vast.ai"
    assert cfg.provider.offers.gpu_names == ["RTX 4090", "RTX 3090"]
    assert cfg.manifest_path == tmp_path.resolve() / "manifest.toml"
    assert cfg.resolve(cfg.provider.ssh_key) == tmp_path.resolve() / "keys" / "id_ed25519"
    # the default store is a SQLite file beside the config, named after the pool
    assert cfg.store_url == f"sqlite:///{tmp_path.resolve() / 'sdxl-pool.db'}"


def test_unknown_key_names_the_file_and_the_field(tmp_path: Path) -> None:
    text = error_of(tmp_path, VAST.replace("min_ready = 2", "min_ready = 2\nmin_readdy = 3"))
    assert str(tmp_path / "POOL.toml") in text
    assert "pool.min_readdy: unknown key" in text
    assert "nothing was created" in text


def test_min_ready_above_max_instances_is_refused(tmp_path: Path) -> None:
    text = error_of(tmp_path, VAST.replace("min_ready = 2", "min_ready = 7"))
    assert "min_ready (7) is greater than max_instances (6)" in text


@pytest.mark.parametrize("name", ["SDXL", "sd_xl", "-sdxl", "sdxl-", "a" * 41, "sd xl", "ünï"])
def test_bad_pool_names_are_refused(tmp_path: Path, name: str) -> None:
    text = error_of(tmp_path, VAST.replace('name = "sdxl"', f'name = "{name}"'))
    assert "pool.name:" in text and "not a pool name" in text


def test_vast_keys_are_not_accepted_for_ssh(tmp_path: Path) -> None:
    text = error_of(
        tmp_path,
        """
        [pool]
        name = "own"
        manifest = "m.toml"
        [provider]
        kind = "ssh"
        image = "vastai/pytorch:latest"
        [[provider.hosts]]
        host = "10.0.0.5"
        """,
    )
    assert "provider.image: unknown key" in text


def test_ssh_and_local_kinds(tmp_path: Path) -> None:
    ssh = load_pool_config(
        write(
            tmp_path,
            """
            [pool]
            name = "own"
            manifest = "m.toml"
            [provider]
            kind = "ssh"
            [[provider.hosts]]
            host = "10.0.0.5"
            [[provider.hosts]]
            host = "10.0.0.6"
            port = 2222
            key = "k"
            """,
        )
    )
    assert isinstance(ssh.provider, SshProvider)
    assert [(h.host, h.port, h.user) for h in ssh.provider.hosts] == [
        ("10.0.0.5", 22, "root"),
        ("10.0.0.6", 2222, "root"),
    ]
    local = load_pool_config(
        write(
            tmp_path,
            """
            [pool]
            name = "box"
            manifest = "m.toml"
            [provider]
            kind = "local"
            base_dir = "/srv/comfyfleet"
            ports = [8200, 8201]
            gpus = [0, 1]
            """,
        )
    )
    assert isinstance(local.provider, LocalProvider) and local.provider.ports == [8200, 8201]


def test_unknown_kind_and_missing_hosts(tmp_path: Path) -> None:
    text = error_of(tmp_path, VAST.replace('kind = "vast"', 'kind = "runpod"'))
    assert 'kind must be "vast", "ssh" or "local"' in text
    text = error_of(
        tmp_path,
        """
        [pool]
        name = "own"
        manifest = "m.toml"
        [provider]
        kind = "ssh"
        """,
    )
    assert "provider.hosts: required key is missing" in text


def test_store_urls(tmp_path: Path) -> None:
    ok = VAST + '\n[store]\nurl = "postgresql://pool@db.internal/fleet"\n'
    assert load_pool_config(write(tmp_path, ok)).store_url.startswith("postgresql://")
    text = error_of(tmp_path, VAST + '\n[store]\nurl = "mysql://x/y"\n')
    assert "store.url:" in text and "sqlite:////" in text


def test_several_errors_are_listed_each_on_a_line(tmp_path: Path) -> None:
    text = error_of(
        tmp_path,
        VAST.replace("disk_gb = 80", "disk_gb = 2").replace("max_dph = 0.6", "max_dph = 0"),
    )
    assert "\n  provider.disk_gb:" in text and "\n  provider.offers.max_dph:" in text


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    assert "invalid TOML" in error_of(tmp_path, "[pool\nname=")
    with pytest.raises(PoolConfigError, match="no such file"):
        load_pool_config(tmp_path / "absent.toml")


def test_the_pool_marker_cannot_be_overridden(tmp_path: Path) -> None:
    text = error_of(tmp_path, VAST.replace('MODE = "warm"', 'COMFYFLEET_POOL = "other"'))
    assert "provider.env: Value error" not in text and "ownership marker" in text


def test_several_errors_stay_on_the_one_line_the_cli_prints(tmp_path: Path) -> None:
    from comfyfleet.errors import one_line

    with pytest.raises(PoolConfigError) as info:
        load_pool_config(
            write(
                tmp_path,
                VAST.replace("disk_gb = 80", "disk_gb = 2").replace("max_dph = 0.6", "max_dph = 0"),
            )
        )
    line = one_line(info.value)
    assert "\n" not in line and "provider.disk_gb:" in line and "provider.offers.max_dph:" in line
