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


# --- every URL inside free text ------------------------------------------------------------


def test_every_url_in_free_text_is_redacted():
    text = (
        "503, message='Service Unavailable', url='https://cdn.example/o?X-Amz-Signature=SIG1&"
        "X-Amz-Credential=CRED1' after a redirect from URL('http://u:PW1@h.example/x?token=TOK1'),"
        " then (see https://h.example/a?sig=SIG2). Done"
    )
    out = redact_text(text)
    for secret in ("SIG1", "CRED1", "PW1", "TOK1", "SIG2"):
        assert secret not in out
    # what is not secret stays readable, punctuation after a URL included
    assert "url='https://cdn.example/o?X-Amz-Signature=***&X-Amz-Credential=***'" in out
    assert "URL('http://***@h.example/x?token=***')," in out
    assert "(see https://h.example/a?sig=***). Done" in out


def test_a_url_that_does_not_parse_loses_its_query_and_userinfo():
    out = redact_text("bad http://user:PW2@[::1/x?token=TOK2 here")
    assert "PW2" not in out and "TOK2" not in out and out.endswith(" here")


@given(
    secret=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.~", min_size=6, max_size=30),
    param=st.sampled_from(["token", "X-Amz-Signature", "sig", "api_key", "X-Goog-Signature"]),
    before=st.text(max_size=20).filter(lambda s: "://" not in s),
    after=st.sampled_from(["", " ", "'", '"', ")", ". next", ", more", "\n"]),
)
def test_a_secret_query_value_never_survives_in_any_text(secret, param, before, after):
    text = f"{before} https://host.example/p/file.bin?a=1&{param}={secret}{after}"
    assert f"{param}={secret}" not in redact_text(text)


@given(password=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=6, max_size=20))
def test_userinfo_never_survives_in_any_text(password):
    assert password not in redact_text(f"cannot connect: http://me:{password}@10.0.0.1:8080/x")
