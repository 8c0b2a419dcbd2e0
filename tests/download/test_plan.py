"""DownloadPlan without a network: destinations, skips, shared URLs, order, collisions."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from comfyfleet.download.plan import DownloadPlan, destination, static_name
from comfyfleet.errors import DestinationTaken, DownloadError
from comfyfleet.manifest import parse_manifest
from comfyfleet.names import UnsafeName

HF = "https://huggingface.co/org/repo/resolve/main"
CIVITAI = "https://civitai.com/api/download/models"
SHA = "ab" * 32


def plan_of(tmp_path, models, records=None):
    m = parse_manifest({"models": models})
    return DownloadPlan(m, tmp_path, records or {})


def rec(size=10, sha256=SHA, url="", **kw):
    return {"size": size, "sha256": sha256, "mtime_ns": 1, "url": url, **kw}


def test_the_destination_is_folder_subfolder_name_under_models(tmp_path):
    p = plan_of(tmp_path, [{"url": f"{CIVITAI}/1", "folder": "loras", "subfolder": "x/y",
                            "filename": "a.safetensors"}])  # fmt: skip
    f = p.files[0]
    assert f.dest == tmp_path / "ComfyUI/models/loras/x/y/a.safetensors"
    assert f.where == "loras/x/y/a.safetensors"


@pytest.mark.parametrize("name", ["../evil", "a/b", "..", "x\nPROVISIONING COMPLETE", "\u202eexe"])
def test_no_name_leaves_the_models_directory(tmp_path, name):
    m = parse_manifest({"models": [{"url": f"{HF}/a.safetensors", "folder": "loras"}]})
    with pytest.raises(UnsafeName):
        destination(tmp_path / "models", m.models[0], name)


def test_a_folder_linked_out_of_the_root_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    models = tmp_path / "root/ComfyUI/models"
    models.mkdir(parents=True)
    (models / "loras").symlink_to(outside)
    p = plan_of(tmp_path / "root", [{"url": f"{CIVITAI}/1", "folder": "loras"}])
    with pytest.raises(DownloadError, match="outside"):
        p.claim(p.files[0], "a.safetensors")


def test_a_resolved_name_taken_by_an_earlier_entry_refuses_the_later_naming_both(tmp_path):
    models = [{"url": f"{CIVITAI}/{i}", "folder": "loras"} for i in (1, 2, 3)]
    models[2]["subfolder"] = "b"
    p = plan_of(tmp_path, models)
    # Names arrive in any order; claims follow the manifest's, so models[1] is the later one.
    refused = p.claim_resolved(
        {2: "same.safetensors", 1: "same.safetensors", 0: "same.safetensors"}
    )
    assert [f.index for f in refused] == [1]
    err = p.files[1].refused
    assert isinstance(err, DestinationTaken)
    assert "models[1]" in str(err) and "models[0]" in str(err) and "filename" in str(err)
    assert p.files[0].dest == tmp_path / "ComfyUI/models/loras/same.safetensors"
    assert p.files[2].dest == tmp_path / "ComfyUI/models/loras/b/same.safetensors"
    assert [f.index for f in p.fetches()[0].files] == [0]
    assert [f.index for x in p.fetches() for f in x.files] == [0, 2]
    # The owner's claim is idempotent; a second claimant is refused again.
    assert p.claim(p.files[0], "other.safetensors") == p.files[0].dest
    with pytest.raises(DestinationTaken):
        p.claim(p.files[1], "same.safetensors")


def test_identical_urls_are_one_fetch_and_the_order_is_largest_first(tmp_path):
    p = plan_of(tmp_path, [
        {"url": f"{HF}/small.safetensors", "folder": "vae", "size": 10},
        {"url": f"{HF}/big.safetensors", "folder": "unet", "size": 1000},
        {"url": f"{HF}/big.safetensors", "folder": "diffusion_models", "size": 1000},
        {"url": f"{HF}/mid.safetensors", "folder": "loras", "size": 100},
        {"url": f"{HF}/mid2.safetensors", "folder": "loras", "size": 100},
    ])  # fmt: skip
    fetches = p.fetches()
    assert [[f.index for f in x.files] for x in fetches] == [[0], [1, 2], [3], [4]]
    assert [x.first for x in p.order(fetches)] == [1, 3, 4, 0]


def test_a_recorded_file_that_fits_is_skipped_and_one_that_does_not_is_fetched(tmp_path):
    models = [
        {"url": f"{HF}/a", "folder": "vae", "filename": "a.safetensors", "sha256": SHA},
        {"url": f"{HF}/b", "folder": "vae", "filename": "b.safetensors", "sha256": "cd" * 32},
        {"url": f"{HF}/c", "folder": "vae", "filename": "c.safetensors", "size": 99},
        # no filename: found on record by its URL in its own folder only
        {"url": f"{CIVITAI}/7", "folder": "loras"},
        {"url": f"{CIVITAI}/8", "folder": "loras", "subfolder": "s"},
    ]
    records = {
        "ComfyUI/models/vae/a.safetensors": rec(),
        "ComfyUI/models/vae/b.safetensors": rec(),  # another sha256
        "ComfyUI/models/vae/c.safetensors": rec(size=10),  # another size
        "ComfyUI/models/loras/served.safetensors": rec(url=f"{CIVITAI}/7"),
        "ComfyUI/models/loras/eight.safetensors": rec(url=f"{CIVITAI}/8"),  # wrong folder
    }
    p = plan_of(tmp_path, models, records)
    skipped = {f.index: f.skip for f in p.files if f.skip}
    assert set(skipped) == {0, 3}
    assert skipped[3].path == tmp_path / "ComfyUI/models/loras/served.safetensors"
    assert p.files[3].name == "served.safetensors"
    assert [x.url for x in p.fetches()] == [models[i]["url"] for i in (1, 2, 4)]
    # A named file with a known sha256 not on record is for the scheduler to re-hash.
    assert [f.index for f in p.to_recheck()] == [1]


def test_a_static_name_is_the_manifests_or_the_urls_but_never_a_civitai_id():
    m = parse_manifest({"models": [
        {"url": f"{HF}/dir/a%20b.safetensors", "folder": "vae"},
        {"url": f"{HF}/x.safetensors", "folder": "vae", "filename": "y.safetensors"},
        {"url": f"{CIVITAI}/123", "folder": "loras"},
        {"url": "https://example.com/files/z.ckpt?sig=1", "folder": "checkpoints"},
    ]})  # fmt: skip
    assert [static_name(e) for e in m.models] == [
        "a b.safetensors",
        "y.safetensors",
        None,
        "z.ckpt",
    ]


def test_records_are_keyed_relative_to_the_root(tmp_path):
    p = plan_of(tmp_path, [{"url": f"{HF}/a", "folder": "vae", "filename": "a.safetensors",
                            "sha256": SHA}],
                {"ComfyUI/models/vae/a.safetensors": rec()})  # fmt: skip
    assert os.path.relpath(p.files[0].skip.path, tmp_path) == "ComfyUI/models/vae/a.safetensors"


NAMES = ["x.safetensors", "y.safetensors", "z.ckpt", "../up", "a/b", "n\nPROVISIONING COMPLETE", ""]


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_claims_never_share_a_destination_or_leave_models(tmp_path_factory, data):
    root = tmp_path_factory.getbasetemp() / "plan-property"
    n = data.draw(st.integers(1, 10))
    models = [
        {
            "url": f"{CIVITAI}/{i}",  # named by the server only: every collision is a runtime one
            "folder": data.draw(st.sampled_from(["loras", "vae", "unet"])),
            "subfolder": data.draw(st.sampled_from(["", "a", "a/b"])),
        }
        for i in range(n)
    ]
    p = plan_of(root, models)
    resolved = {i: data.draw(st.sampled_from(NAMES)) for i in range(n)}

    p.claim_resolved(resolved)

    owners = [f for f in p.files if f.dest is not None]
    assert len({f.dest for f in owners}) == len(owners)
    models_dir = root / "ComfyUI" / "models"
    for f in owners:
        assert models_dir in f.dest.parents and f.name == resolved[f.index]
    for f in p.files:
        name = resolved[f.index]
        if not name:
            assert f.dest is None and f.refused is None  # still unnamed: named later, or fails
            continue
        safe = "/" not in name and "\n" not in name and ".." not in name
        earlier = [
            o for o in owners
            if o.index < f.index and (o.entry.folder, o.entry.subfolder, o.name)
            == (f.entry.folder, f.entry.subfolder, name)
        ]  # fmt: skip
        if f.refused is None:
            assert f.dest is not None and safe and not earlier
        else:
            assert not safe or (earlier and isinstance(f.refused, DestinationTaken))


def test_a_part_file_has_one_writer(tmp_path):
    from comfyfleet.download.partfile import Identity, PartFile

    final = tmp_path / "m.safetensors"
    first = PartFile(final, Identity(url="u", size=10, sha256=None, etag=None))
    second = PartFile(final, Identity(url="u", size=10, sha256=None, etag=None))
    first.open(keep=False)
    try:
        with pytest.raises(DownloadError, match="another download"):
            second.open(keep=False)
        assert second.fd is None
    finally:
        first.close()
    second.open(keep=True)  # free again once the first writer closed it
    second.close()
