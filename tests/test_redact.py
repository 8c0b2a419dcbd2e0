"""Secrets are removed from URLs and free text before anything is printed."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from comfyfleet.redact import redact_text, redact_url


def test_query_tokens_and_signatures_are_redacted_but_the_rest_is_kept():
    url = "https://civitai.com/api/download/models/42?type=Model&token=abc123def&X-Amz-Signature=s1"
    out = redact_url(url)
    assert "abc123def" not in out and "s1" not in out.split("Signature=")[1]
    assert out.startswith("https://civitai.com/api/download/models/42?type=Model")


def test_userinfo_is_redacted():
    assert redact_url("https://user:pw@host/x") == "https://***@host/x"


def test_bearer_and_hf_tokens_in_text_are_redacted(monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    text = redact_text("Authorization: Bearer abc.def-ghi and hf_abcdefghijklmnop")
    assert "abc.def-ghi" not in text and "hf_abcdefghijklmnop" not in text


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=8, max_size=40))
def test_environment_secrets_are_redacted_anywhere(secret):
    import os

    old = os.environ.get("CIVITAI_TOKEN")
    os.environ["CIVITAI_TOKEN"] = secret
    try:
        assert secret not in redact_text(f"before {secret} after")
        assert secret not in redact_url(f"https://h/p?x={secret}")
    finally:
        if old is None:
            del os.environ["CIVITAI_TOKEN"]
        else:
            os.environ["CIVITAI_TOKEN"] = old
