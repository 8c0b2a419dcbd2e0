"""File names from Content-Disposition (RFC 6266 / RFC 5987) and URLs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from comfyfleet.sources.filenames import (
    filename_from_content_disposition as cd,
)
from comfyfleet.sources.filenames import (
    filename_from_signed_url,
    filename_from_url,
)


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ('attachment; filename="model.safetensors"', "model.safetensors"),
        ("attachment; filename=model.safetensors", "model.safetensors"),
        ('attachment; filename="model.safetensors";', "model.safetensors"),
        ("attachment; filename=model.safetensors;", "model.safetensors"),
        ('attachment;filename="a \\"q\\".ckpt"', 'a "q".ckpt'),
        ("attachment; filename*=UTF-8''na%C3%AFve%20model.safetensors", "naïve model.safetensors"),
        (
            "attachment; filename=\"fallback.bin\"; filename*=UTF-8''real.safetensors",
            "real.safetensors",
        ),
        (
            "attachment; filename*=UTF-8''real.safetensors; filename=\"fallback.bin\"",
            "real.safetensors",
        ),
        ("attachment; filename*=utf-8'en'x.pt;", "x.pt"),
        ('attachment; filename="../../etc/passwd"', "passwd"),
        ('attachment; filename="C:\\models\\x.ckpt"', "x.ckpt"),
        ('attachment; filename=".."', None),
        ("attachment", None),
        ("", None),
        (None, None),
        ("attachment; filename*=bogus-charset''x%FF.pt", None),
    ],
)
def test_content_disposition(header, name):
    assert cd(header) == name


def test_filename_from_url_and_signed_url():
    assert filename_from_url("https://h/a/b/My%20Model.safetensors?x=1") == "My Model.safetensors"
    assert filename_from_url("https://h/") is None
    signed = (
        "https://r2.example/f?X-Amz-Expires=86400&response-content-disposition="
        "attachment%3B%20filename%3D%22served.safetensors%22&X-Amz-Signature=s"
    )
    assert filename_from_signed_url(signed) == "served.safetensors"
    assert (
        filename_from_signed_url(
            "https://b2.example/f?b2ContentDisposition=attachment%3Bfilename%3Dx.pt"
        )
        == "x.pt"
    )


@given(st.text(max_size=80))
def test_content_disposition_never_raises_and_never_returns_a_path(header):
    name = cd(header)
    assert name is None or ("/" not in name and "\\" not in name and ".." not in name and name)
