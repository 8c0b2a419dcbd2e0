"""resolve(): what each source tells us about a file, and which errors it raises — against the
real local model server (HF hub + CDN on another origin, Civitai, plain hosts)."""

from __future__ import annotations

import hashlib
import socket

import pytest

from comfyfleet import errors
from comfyfleet.manifest import ModelEntry
from comfyfleet.retry import RetryPolicy
from comfyfleet.sources import auth, kind_of, resolve
from comfyfleet.testing.modelserver import Faults, make_safetensors

DATA = make_safetensors(4096, seed=1)
SHA = hashlib.sha256(DATA).hexdigest()


def entry(url: str, **kw) -> ModelEntry:
    return ModelEntry(url=url, folder="checkpoints", **kw)


# --- Hugging Face ------------------------------------------------------------------------


async def test_hf_one_head_gives_size_sha256_and_the_cdn_url_without_authorization(
    server, session, monkeypatch
):
    monkeypatch.setenv("HF_TOKEN", "hf_tokenAAAA1111")
    url = server.add_hf_file("org/repo", "sub/dir/model.safetensors", DATA)
    remote = await resolve(session, entry(url))
    assert remote.kind == "huggingface"
    assert remote.filename == "model.safetensors"
    assert remote.size == len(DATA) and remote.sha256 == SHA
    assert remote.fetch_url.startswith(server.cdn_url + "/cdn/")
    assert "Authorization" not in remote.fetch_headers
    assert remote.fetch_headers["User-Agent"] == auth.USER_AGENT
    # exactly one HEAD, not followed; the token went to the hub only
    assert [(r.method, r.path) for r in server.requests] == [
        ("HEAD", "/org/repo/resolve/main/sub/dir/model.safetensors")
    ]
    assert server.requests[0].headers["Authorization"] == "Bearer hf_tokenAAAA1111"
    # and the CDN serves the bytes to exactly those headers
    async with session.get(remote.fetch_url, headers=remote.fetch_headers) as resp:
        assert resp.status == 200 and await resp.read() == DATA


async def test_public_hf_urls_are_fetched_from_hf_endpoint(server, session):
    server.add_hf_file("org/repo", "m.safetensors", DATA)
    url = "https://huggingface.co/org/repo/resolve/main/m.safetensors"
    remote = await resolve(session, entry(url))
    assert remote.url == url and remote.size == len(DATA)
    assert server.requests[0].path == "/org/repo/resolve/main/m.safetensors"


async def test_manifest_sha256_and_filename_win_over_the_servers(server, session):
    url = server.add_hf_file("org/repo", "m.safetensors", DATA)
    remote = await resolve(session, entry(url, sha256="AB" * 32, filename="mine.safetensors"))
    assert remote.sha256 == "ab" * 32 and remote.filename == "mine.safetensors"


async def test_gated_repo_without_token_is_gated_no_token(server, session):
    url = server.add_hf_file("bfl/flux", "ae.safetensors", DATA, gated=True)
    with pytest.raises(errors.GatedRepo) as exc:
        await resolve(session, entry(url))
    assert type(exc.value) is errors.GatedRepo and exc.value.status == "gated_no_token"
    assert "HF_TOKEN" in str(exc.value)


async def test_gated_repo_with_a_token_lacking_the_grant_is_gated_no_access(
    server, session, monkeypatch
):
    url = server.add_hf_file(
        "bfl/flux", "ae.safetensors", DATA, gated=True, granted_tokens=("hf_yes1234",)
    )
    monkeypatch.setenv("HF_TOKEN", "hf_nope5678")
    with pytest.raises(errors.GatedNoAccess) as exc:
        await resolve(session, entry(url))
    assert exc.value.status == "gated_no_access"
    assert "https://huggingface.co/bfl/flux" in str(exc.value)
    monkeypatch.setenv("HF_TOKEN", "hf_yes1234")
    assert (await resolve(session, entry(url))).sha256 == SHA


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("org/repo/resolve/main/missing.safetensors", "does not exist"),
        ("org/repo/resolve/v9/m.safetensors", "revision 'v9'"),
        ("org/nope/resolve/main/m.safetensors", "repository org/nope"),
    ],
)
async def test_missing_entry_revision_and_repo_are_not_found(server, session, path, words):
    server.add_hf_file("org/repo", "m.safetensors", DATA)
    with pytest.raises(errors.NotFound) as exc:
        await resolve(session, entry(f"{server.base_url}/{path}"))
    assert words in str(exc.value) and exc.value.status == "not_found"


# --- Civitai -----------------------------------------------------------------------------


async def test_civitai_without_token_is_token_required(server, session):
    url = server.add_civitai(101, DATA, "served.safetensors", token_required=True)
    with pytest.raises(errors.TokenRequired) as exc:
        await resolve(session, entry(url))
    assert exc.value.status == "civitai_token_required" and "CIVITAI_TOKEN" in str(exc.value)
    assert all(r.method != "HEAD" for r in server.requests)


async def test_civitai_with_token_resolves_to_the_cdn_and_never_sends_it_there(
    server, session, monkeypatch
):
    monkeypatch.setenv("CIVITAI_API_TOKEN", "civ-secret-42")
    url = server.add_civitai(
        102, DATA, "Model_v2.safetensors", api_name="model.safetensors", token_required=True
    )
    remote = await resolve(session, entry(url))
    assert remote.kind == "civitai"
    assert remote.filename == "Model_v2.safetensors"  # Content-Disposition (DESIGN.md rule)
    assert remote.api_filename == "model.safetensors"
    assert remote.sha256 == SHA  # uppercase in the API, lowercased here
    assert remote.size == len(DATA)  # exact, from Content-Range (sizeKB is approximate)
    assert (
        remote.fetch_url.startswith(server.cdn_url) and "Authorization" not in remote.fetch_headers
    )
    download = server.requests_for("/api/download/models/102")
    assert [r.method for r in download] == ["GET"] and download[0].range == "bytes=0-0"
    assert download[0].headers["Authorization"] == "Bearer civ-secret-42"
    assert all("Authorization" not in r.headers for r in server.requests_for("/cdn/"))
    async with session.get(remote.fetch_url, headers=remote.fetch_headers) as resp:
        assert resp.status == 200 and await resp.read() == DATA


async def test_civitai_filename_in_manifest_wins(server, session):
    url = server.add_civitai(103, DATA, "served.safetensors")
    remote = await resolve(session, entry(url, filename="mine.safetensors"))
    assert remote.filename == "mine.safetensors" and remote.served_filename == "served.safetensors"


async def test_a_login_redirect_is_token_required_not_a_model(server, session, monkeypatch):
    # Should our User-Agent ever look like a browser, Civitai answers with its login page.
    monkeypatch.setattr(auth, "USER_AGENT", "Mozilla/5.0 (X11; Linux) Chrome/120")
    url = server.add_civitai(104, DATA, "x.safetensors", token_required=True)
    with pytest.raises(errors.TokenRequired):
        await resolve(session, entry(url))
    assert not server.requests_for("/login")


async def test_unknown_civitai_version_is_not_found(server, session):
    with pytest.raises(errors.NotFound):
        await resolve(session, entry(f"{server.base_url}/api/download/models/999"))


# --- plain HTTP --------------------------------------------------------------------------


async def test_plain_head(server, session):
    url = server.add_file("a/model.safetensors", DATA)
    remote = await resolve(session, entry(url))
    assert (remote.kind, remote.filename, remote.size, remote.sha256) == (
        "http", "model.safetensors", len(DATA), None,
    )  # fmt: skip
    assert remote.etag and remote.accept_ranges and remote.fetch_url == url
    assert [r.method for r in server.requests] == ["HEAD"]


async def test_plain_without_head_falls_back_to_a_one_byte_get(server, session):
    url = server.add_file("a/model.safetensors", DATA, no_head=True)
    remote = await resolve(session, entry(url))
    assert remote.size == len(DATA)
    assert [(r.method, r.range) for r in server.requests] == [("HEAD", None), ("GET", "bytes=0-0")]


async def test_an_html_page_is_not_a_model(server, session):
    url = server.add_file("a/model.safetensors", DATA, html=True)
    with pytest.raises(errors.NotAModel) as exc:
        await resolve(session, entry(url))
    assert exc.value.status == "not_a_model"


async def test_server_errors_are_retried_then_succeed(server, session):
    url = server.add_file("a/m.safetensors", DATA, statuses=[(503, "0"), (500, None)])
    assert (await resolve(session, entry(url))).size == len(DATA)
    assert len(server.requests) == 3


async def test_server_errors_past_the_retries_are_server_error(server, session):
    url = server.add_file("a/m.safetensors", DATA, faults=Faults(statuses=[(503, None)] * 5))
    with pytest.raises(errors.ServerError) as exc:
        await resolve(session, entry(url), policy=RetryPolicy(retries=2))
    assert exc.value.status == "server_error" and len(server.requests) == 3


async def test_429_is_rate_limited_with_retry_after(server, session):
    url = server.add_file("a/m.safetensors", DATA, statuses=[(429, "0")] * 3)
    with pytest.raises(errors.RateLimited) as exc:
        await resolve(session, entry(url))
    assert exc.value.retry_after == 0.0


async def test_missing_plain_file_is_not_found(server, session):
    with pytest.raises(errors.NotFound):
        await resolve(session, entry(f"{server.base_url}/files/nothing.bin"))


async def test_connection_refused_is_unreachable(session):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(errors.Unreachable) as exc:
        await resolve(
            session, entry(f"http://127.0.0.1:{port}/m.safetensors"), policy=RetryPolicy(retries=1)
        )
    assert exc.value.status == "unreachable"


# --- kinds and auth ----------------------------------------------------------------------


def test_kind_of_public_hosts(monkeypatch):
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.delenv("CIVITAI_ENDPOINT", raising=False)
    assert kind_of("https://huggingface.co/a/b/resolve/main/c.safetensors") == "huggingface"
    assert kind_of("https://huggingface.co/datasets/a/b/resolve/main/c.bin") == "huggingface"
    assert kind_of("https://huggingface.co/a/b/blob/main/c.safetensors") == "http"
    assert kind_of("https://civitai.com/api/download/models/12345?type=Model") == "civitai"
    assert kind_of("https://civitai.com/models/12345") == "http"
    assert kind_of("https://example.com/a/b/resolve/main/c") == "http"


def test_kind_of_honours_endpoints(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "https://hf-mirror.example/")
    monkeypatch.setenv("CIVITAI_ENDPOINT", "http://127.0.0.1:9")
    assert kind_of("https://hf-mirror.example/a/b/resolve/main/c") == "huggingface"
    assert kind_of("https://huggingface.co/a/b/resolve/main/c") == "huggingface"
    assert kind_of("http://127.0.0.1:9/api/download/models/7") == "civitai"
    assert kind_of("http://127.0.0.1:10/api/download/models/7") == "http"


def test_tokens_go_only_to_their_own_host(monkeypatch):
    for var in ("HF_ENDPOINT", "CIVITAI_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_TOKEN", "hf_abc12345")
    monkeypatch.setenv("CIVITAI_TOKEN", "civ12345")
    hf = auth.auth_headers("https://huggingface.co/a/b/resolve/main/c")
    civ = auth.auth_headers("https://civitai.com/api/download/models/1")
    assert hf["Authorization"] == "Bearer hf_abc12345"
    assert civ["Authorization"] == "Bearer civ12345"
    for other in (
        "https://cdn-lfs.huggingface.co/repos/x",
        "https://cas-bridge.xethub.hf.co/x",
        "https://x.r2.cloudflarestorage.com/file?X-Amz-Signature=s",
        "https://example.com/model.safetensors",
        "https://huggingface.co.evil.example/a/b/resolve/main/c",
    ):
        headers = auth.auth_headers(other)
        assert "Authorization" not in headers and headers["User-Agent"] == auth.USER_AGENT
    assert not any(t in auth.USER_AGENT.lower() for t in ("mozilla", "chrome", "safari"))
