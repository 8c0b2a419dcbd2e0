"""The plain-name rule, path containment and log escaping (comfyfleet.names)."""

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from comfyfleet.names import UnsafeName, escape_controls, path_under, plain_name, plain_subpath


@pytest.mark.parametrize(
    "bad",
    [
        "",
        ".",
        "..",
        "a/b",
        "a\\b",
        "../x",
        "x..y",
        "a\nb",
        "a\x00b",
        "a\x85b",
        "x\u202egpj.exe",
        "a\u2028b",
        " lead",
        "trail ",
        "é" * 200,
    ],
)
def test_plain_name_refuses(bad: str) -> None:
    with pytest.raises(UnsafeName):
        plain_name(bad, what="filename")


@pytest.mark.parametrize("good", ["model.safetensors", "wan 2.1 vae.pt", "ÄÖ-模型.ckpt", "a" * 255])
def test_plain_name_accepts(good: str) -> None:
    assert plain_name(good) == good


def test_plain_subpath_splits_and_checks_each_segment() -> None:
    assert plain_subpath("") == ()
    assert plain_subpath("SDXL/ace") == ("SDXL", "ace")
    for bad in ("/abs", "a//b", "a/../b", "a/\x1b"):
        with pytest.raises(UnsafeName):
            plain_subpath(bad)


def test_path_under_refuses_a_symlink_out_of_the_root(tmp_path: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, root / "loras")
    with pytest.raises(UnsafeName, match="outside"):
        path_under(root, "loras", "x.safetensors")
    assert path_under(root, "vae", "x.safetensors") == root / "vae" / "x.safetensors"


@given(st.text())
def test_escaped_text_has_no_line_breaks_or_controls(text: str) -> None:
    out = escape_controls(text)
    assert "\n" not in out and "\r" not in out and "\x1b" not in out and "\u202e" not in out
    assert out.splitlines() == [out] or out == ""
