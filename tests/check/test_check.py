"""`comfyfleet check`: every status, the three known filename mistakes, disk, nodes, exit
codes and the --json document — against the real local model server, downloading nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from repos import (
    ANIMATEDIFF,
    KNOWN_MISTAKES,
    REPOS,
    add_repo,
    assert_downloaded_nothing,
    closed_port_url,
)
from typer.testing import CliRunner

from comfyfleet.cli import _register, app
from comfyfleet.manifest import parse_manifest
from comfyfleet.preflight import STATUSES, EntryResult, check_disk
from comfyfleet.sources import closest_paths
from comfyfleet.testing.modelserver import Faults, make_safetensors

_register()
runner = CliRunner()


def write_manifest(tmp_path: Path, models: list[dict], nodes: str = "") -> Path:
    lines = ["version = 1", ""]
    for m in models:
        lines.append("[[models]]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in m.items()]
        lines.append("")
    path = tmp_path / "manifest.toml"
    path.write_text("\n".join(lines) + nodes)
    return path


def run_check(path: Path, root: Path, *extra: str):
    return runner.invoke(app, ["check", str(path), "--root", str(root), *extra])


@pytest.mark.parametrize(("repo", "wrong", "right"), KNOWN_MISTAKES)
def test_closest_paths_put_the_real_file_first(repo, wrong, right):
    assert closest_paths(wrong, REPOS[repo])[0] == right


def test_known_mistakes_get_the_right_suggestion_first(server, tmp_path):
    for repo, files in REPOS.items():
        add_repo(server, repo, files)
    models = [
        {
            "url": f"{server.base_url}/{repo}/resolve/main/{wrong}",
            "folder": "vae",
            "filename": f"f{i}.safetensors",
        }
        for i, (repo, wrong, _) in enumerate(KNOWN_MISTAKES)
    ]
    result = run_check(write_manifest(tmp_path, models), tmp_path, "--json")
    assert result.exit_code == 1, result.output
    doc = json.loads(result.stdout)
    for entry, (repo, _, right) in zip(doc["entries"], KNOWN_MISTAKES, strict=True):
        assert entry["status"] == "not_found"
        assert entry["suggestions"][0] == f"{server.base_url}/{repo}/resolve/main/{right}"
        assert right.rsplit("/", 1)[-1] in entry["message"]
    assert_downloaded_nothing(server)


def zoo(server, tmp_path) -> list[dict]:
    """One manifest entry per status (gated ones depend on whether HF_TOKEN is set)."""
    add_repo(server, ANIMATEDIFF, REPOS[ANIMATEDIFF])
    ok = server.add_hf_file("org/repo", "ok.safetensors", make_safetensors(2048))
    granted = server.add_hf_file(
        "bfl/granted",
        "g.safetensors",
        make_safetensors(1024),
        gated=True,
        granted_tokens=("hf_good0001",),
    )
    ungranted = server.add_hf_file("bfl/other", "u.safetensors", make_safetensors(1024), gated=True)
    civitai = server.add_civitai(7, make_safetensors(512), "c.safetensors", token_required=True)
    page = server.add_file("page.safetensors", b"<html>", html=True)
    broken = server.add_file("broken.safetensors", b"x", faults=Faults(statuses=[(503, None)] * 10))
    return [
        {"url": ok, "folder": "checkpoints"},
        {
            "url": f"{server.base_url}/{ANIMATEDIFF}/resolve/main/mm_sdxl_v1_beta.ckpt",
            "folder": "checkpoints",
        },
        {"url": granted, "folder": "vae"},
        {"url": ungranted, "folder": "vae"},
        {"url": civitai, "folder": "loras"},
        {"url": page, "folder": "loras"},
        {"url": broken, "folder": "loras"},
        {"url": closed_port_url(), "folder": "loras"},
    ]


@pytest.mark.parametrize("token", [None, "hf_good0001"])
def test_every_status_is_classified_and_nothing_is_downloaded(server, tmp_path, monkeypatch, token):
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    result = run_check(write_manifest(tmp_path, zoo(server, tmp_path)), tmp_path, "--json")
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    statuses = [e["status"] for e in doc["entries"]]
    gated = ["ok", "gated_no_access"] if token else ["gated_no_token", "gated_no_token"]
    rest = ["civitai_token_required", "not_a_model", "server_error", "unreachable"]
    assert statuses == ["ok", "not_found", *gated, *rest]
    assert set(statuses) <= set(STATUSES)
    first = doc["entries"][0]
    assert first["size"] == 2048 and len(first["sha256"]) == 64
    for e in doc["entries"]:
        assert set(e) >= {
            "url",
            "folder",
            "filename",
            "status",
            "size",
            "sha256",
            "suggestions",
            "message",
        }
        assert e["status"] == "ok" or e["message"]
    assert doc["entries"][1]["suggestions"][0].endswith("/mm_sdxl_v10_beta.ckpt")
    assert "HF_TOKEN" in doc["entries"][3]["message"]
    assert doc["ok"] is False and set(doc["disk"]) >= {"free", "needed"}
    assert_downloaded_nothing(server)


def test_all_ok_exits_0_and_failing_optional_entries_only_warn(server, tmp_path):
    ok = server.add_hf_file("org/repo", "ok.safetensors", make_safetensors(2048))
    missing = f"{server.base_url}/org/repo/resolve/main/nope.safetensors"
    path = write_manifest(
        tmp_path,
        [
            {"url": ok, "folder": "checkpoints"},
            {"url": missing, "folder": "loras", "required": False},
        ],
    )
    result = run_check(path, tmp_path, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["ok"] is True and doc["entries"][1]["status"] == "not_found"
    assert any("optional" in w for w in doc["warnings"])


def test_plain_output_lists_entries_suggestions_and_disk(server, tmp_path):
    add_repo(server, ANIMATEDIFF, REPOS[ANIMATEDIFF])
    url = f"{server.base_url}/{ANIMATEDIFF}/resolve/main/mm_sdxl_v1_beta.ckpt"
    result = run_check(write_manifest(tmp_path, [{"url": url, "folder": "checkpoints"}]), tmp_path)
    assert result.exit_code == 1
    assert "not_found" in result.stdout and "suggestion:" in result.stdout
    assert "mm_sdxl_v10_beta.ckpt" in result.stdout and "disk:" in result.stdout
    assert "check FAILED" in result.stdout


def test_civitai_api_and_served_names_are_both_reported(server, tmp_path, monkeypatch):
    monkeypatch.setenv("CIVITAI_TOKEN", "civ-token-77")
    url = server.add_civitai(
        9,
        make_safetensors(700),
        "Served_v1.safetensors",
        api_name="api.safetensors",
        token_required=True,
    )
    result = run_check(
        write_manifest(tmp_path, [{"url": url, "folder": "loras"}]), tmp_path, "--json"
    )
    assert result.exit_code == 0, result.output
    e = json.loads(result.stdout)["entries"][0]
    assert e["filename"] == "Served_v1.safetensors" and e["api_filename"] == "api.safetensors"
    assert "Served_v1.safetensors" in e["message"] and "api.safetensors" in e["message"]
    assert_downloaded_nothing(server)


def test_unpinned_nodes_are_warned_about(server, tmp_path):
    nodes = '\n[[nodes]]\nrepo = "https://github.com/a/pinned.git"\nref = "v1"\n' \
            '\n[[nodes]]\nrepo = "https://github.com/a/loose.git"\n'  # fmt: skip
    result = run_check(write_manifest(tmp_path, [], nodes), tmp_path, "--json")
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert [n["status"] for n in doc["nodes"]] == ["pinned", "unpinned"]
    assert any("loose.git" in w and "ref" in w for w in doc["warnings"])


def test_invalid_manifest_exits_2_with_a_field_path(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text(
        'version = 1\n[[models]]\nurl = "https://x/y.safetensors"\nfolder = "checkpoint"\n'
    )
    result = run_check(path, tmp_path)
    assert result.exit_code == 2
    assert "models[0].folder" in result.stderr and "checkpoints" in result.stderr
    assert "Traceback" not in result.output


def test_disk_needs_the_models_plus_headroom(tmp_path):
    manifest = parse_manifest({"models": [{"url": "https://x/a.safetensors", "folder": "vae"}] * 1})
    small = check_disk(
        manifest, tmp_path, [EntryResult("u", "vae", "a.safetensors", "ok", size=10)]
    )
    assert small.sufficient and small.needed == 10 and small.headroom >= 1 << 30
    huge = check_disk(
        manifest, tmp_path, [EntryResult("u", "vae", "a.safetensors", "ok", size=1 << 60)]
    )
    assert not huge.sufficient and huge.free < huge.needed


def test_files_already_in_place_are_not_counted(tmp_path):
    manifest = parse_manifest({"models": [{"url": "https://x/a.safetensors", "folder": "vae"}]})
    target = tmp_path / "ComfyUI" / "models" / "vae" / "a.safetensors"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"x" * 10)
    disk = check_disk(manifest, tmp_path, [EntryResult("u", "vae", "a.safetensors", "ok", size=10)])
    assert disk.needed == 0
