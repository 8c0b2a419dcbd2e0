"""git checkouts (never clobbering) and node installs (install.py, constraints)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from comfyfleet.errors import InstallError
from comfyfleet.events import RunLog
from comfyfleet.install.git import ensure_checkout
from comfyfleet.testing.repos import make_node_repo


@pytest.fixture
def log(tmp_path: Path) -> RunLog:
    return RunLog(tmp_path / "state", "test")


async def test_checkout_into_a_directory_that_already_holds_models(tmp_path: Path, log: RunLog):
    repo = make_node_repo(tmp_path / "repos", "Repo", ["A"])
    dest = tmp_path / "ComfyUI"
    (dest / "models/vae").mkdir(parents=True)
    (dest / "models/vae/x.safetensors").write_bytes(b"model")

    first = await ensure_checkout(repo.url, repo.tag, dest, log=log, source="t")
    again = await ensure_checkout(repo.url, repo.tag, dest, log=log, source="t")

    assert first.action == "cloned" and first.commit == repo.commit
    assert again.action == "unchanged"
    assert (dest / "models/vae/x.safetensors").read_bytes() == b"model"
    assert (dest / "__init__.py").exists()


async def test_default_branch_follows_new_commits(tmp_path: Path, log: RunLog):
    repo = make_node_repo(tmp_path / "repos", "Repo", ["A"])
    dest = tmp_path / "node"
    await ensure_checkout(repo.url, None, dest, log=log, source="t")
    new = repo.commit_files({"b.py": ""}, message="more")
    moved = await ensure_checkout(repo.url, None, dest, log=log, source="t")
    assert moved.action == "updated" and moved.commit == new


async def test_dirty_checkout_is_reported_not_clobbered(tmp_path: Path, log: RunLog):
    repo = make_node_repo(tmp_path / "repos", "Repo", ["A"])
    dest = tmp_path / "node"
    await ensure_checkout(repo.url, repo.tag, dest, log=log, source="t")
    (dest / "__init__.py").write_text("# my local fix\n")
    repo.commit_files({"b.py": ""}, message="more", tag="v2")

    same = await ensure_checkout(repo.url, "v1.0.0", dest, log=log, source="t")
    assert "local changes kept" in same.warning
    with pytest.raises(InstallError, match="local changes"):
        await ensure_checkout(repo.url, "v2", dest, log=log, source="t")
    assert (dest / "__init__.py").read_text() == "# my local fix\n"


async def test_diverged_checkout_is_reported_not_clobbered(tmp_path: Path, log: RunLog):
    repo = make_node_repo(tmp_path / "repos", "Repo", ["A"])
    dest = tmp_path / "node"
    await ensure_checkout(repo.url, repo.tag, dest, log=log, source="t")
    env = {"GIT_AUTHOR_NAME": "u", "GIT_AUTHOR_EMAIL": "u@x", "GIT_COMMITTER_NAME": "u",
           "GIT_COMMITTER_EMAIL": "u@x", "PATH": "/usr/bin:/bin"}  # fmt: skip
    subprocess.run(
        ["git", "-C", str(dest), "commit", "-q", "--allow-empty", "-m", "local"],
        check=True,
        env=env,
    )
    repo.commit_files({"b.py": ""}, message="more", tag="v2")

    with pytest.raises(InstallError, match="on no remote branch"):
        await ensure_checkout(repo.url, "v2", dest, log=log, source="t")


async def test_unknown_ref_is_an_install_error(tmp_path: Path, log: RunLog):
    repo = make_node_repo(tmp_path / "repos", "Repo", ["A"])
    with pytest.raises(InstallError, match="ref 'v9' not found"):
        await ensure_checkout(repo.url, "v9", tmp_path / "node", log=log, source="t")


async def test_node_install_py_runs_with_the_constraints_in_its_environment(
    tmp_path: Path, root: Path, venv_python: Path, server
):
    from comfyfleet.install.comfyui import prepare_environment
    from comfyfleet.install.nodes import install_nodes
    from comfyfleet.manifest import parse_manifest

    node = make_node_repo(
        tmp_path / "repos", "WithInstallPy", ["W"],
        install_py="import os\nopen('installed.txt', 'w').write(os.environ['PIP_CONSTRAINT'])\n",
    )  # fmt: skip
    manifest = parse_manifest(
        {"comfyui": {"python": str(venv_python)}, "nodes": [{"repo": node.url, "ref": node.tag}]}
    )
    log = RunLog(root, "test")
    env = await prepare_environment(manifest, root, log)
    assert env.pinned == {"torch": "1.0.0"}

    results = await install_nodes(manifest, root, log, env=env)
    again = await install_nodes(manifest, root, log, env=env)

    assert [r.status for r in results] == ["installed"]
    assert [r.status for r in again] == ["unchanged"]
    marker = root / "ComfyUI/custom_nodes/WithInstallPy/installed.txt"
    assert marker.read_text() == str(root / ".comfyfleet/constraints.txt")


@pytest.mark.parametrize("pin", ["tag", "commit", "short commit"])
async def test_a_checkout_at_its_pinned_ref_needs_no_network(tmp_path: Path, log: RunLog, pin):
    repo = make_node_repo(tmp_path / "repos", "Repo", ["A"])
    ref = {"tag": repo.tag, "commit": repo.commit, "short commit": repo.commit[:9]}[pin]
    dest = tmp_path / "node"
    first = await ensure_checkout(repo.url, ref, dest, log=log, source="t")
    gone = repo.bare.rename(tmp_path / "unreachable.git")  # a fetch would now fail

    again = await ensure_checkout(repo.url, ref, dest, log=log, source="t")

    assert first.commit == again.commit == repo_commit(gone) and again.action == "unchanged"


async def test_a_branch_ref_is_fetched_again(tmp_path: Path, log: RunLog):
    repo = make_node_repo(tmp_path / "repos", "Repo", ["A"])
    branch = subprocess.run(["git", "-C", str(repo.bare), "symbolic-ref", "--short", "HEAD"],
                            capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    dest = tmp_path / "node"
    await ensure_checkout(repo.url, branch, dest, log=log, source="t")
    new = repo.commit_files({"c.py": ""}, message="on the branch")

    moved = await ensure_checkout(repo.url, branch, dest, log=log, source="t")

    assert moved.action == "updated" and moved.commit == new


def repo_commit(bare: Path) -> str:
    return subprocess.run(["git", "-C", str(bare), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()  # fmt: skip


async def test_root_venv_reuses_the_images_pip_and_installs_into_itself(
    tmp_path: Path, root: Path, wheels: Path
):
    from comfyfleet.install.comfyui import prepare_environment
    from comfyfleet.manifest import parse_manifest

    log = RunLog(root, "test")
    env = await prepare_environment(parse_manifest({}), root, log)

    assert env.python == root / "venv/bin/python"
    # no pip of its own (ensurepip skipped): the image's, through its site-packages
    assert not list((root / "venv/lib").glob("python*/site-packages/pip"))
    subprocess.run(
        [str(env.python), "-m", "pip", "install", "-q", "--no-index", "--find-links",
         str(wheels), "standin-helper"],
        check=True, capture_output=True,
    )  # fmt: skip
    installed = list((root / "venv/lib").glob("python*/site-packages/standin_helper*"))
    assert installed, "pip run by the venv's python installed outside the venv"
