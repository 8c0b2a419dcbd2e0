"""One retry policy, applied once: a failing host gets exactly ``retries + 1`` requests per
exchange (counted in the model server's request log), and one status classifier gives probes
and downloads the same verdict."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from comfyfleet import errors
from comfyfleet.cli import _register, app
from comfyfleet.sources.status import classify
from comfyfleet.testing.modelserver import Faults, make_safetensors

from .conftest import events, manifest, manifest_toml, run

_register()
DATA = make_safetensors(4096, seed=3)
FAILING = [(503, "0")] * 100  # Retry-After: 0, so the test waits for nothing


@pytest.mark.parametrize("retries", [0, 2, 8])
async def test_a_503_host_gets_retries_plus_one_probes(tmp_path, server, retries):
    url = server.add_file("f/m.bin", DATA, faults=Faults(statuses=list(FAILING)))
    m = manifest([{"url": url, "folder": "loras"}], retries=retries)
    report = await run(m, tmp_path)
    assert report.files[0].status == "failed"
    assert len(server.requests_for("/files/f/m.bin")) == retries + 1
    assert len(events(tmp_path, "file_retry")) == retries  # each retry reported once


async def test_a_503_cdn_gets_retries_plus_one_ranged_gets(tmp_path, server):
    faults = Faults(statuses=list(FAILING))
    url = server.add_hf_file("org/r", "m.safetensors", DATA, faults=faults)
    m = manifest([{"url": url, "folder": "loras"}], retries=3, connections_per_file=1)
    report = await run(m, tmp_path)
    assert report.files[0].status == "failed" and "HTTP 503" in report.files[0].error
    assert len(server.requests_for("/resolve/")) == 1
    assert len(server.requests_for("/cdn/", "GET")) == 4


def test_check_makes_three_attempts_whatever_download_retries_says(tmp_path, server):
    url = server.add_file("c/m.bin", DATA, faults=Faults(statuses=list(FAILING)))
    path = manifest_toml(tmp_path / "m.toml", [{"url": url, "folder": "loras"}], retries=8)
    result = CliRunner().invoke(app, ["check", str(path), "--root", str(tmp_path), "--json"])
    (entry,) = json.loads(result.stdout)["entries"]
    assert entry["status"] == "server_error" and "after 3 attempts" in entry["message"]
    assert len(server.requests_for("/files/c/m.bin")) == 3


async def test_retry_after_is_honoured_and_counted_once(tmp_path, server):
    faults = Faults(statuses=[(429, "0"), (503, "0")])
    url = server.add_file("r/m.bin", DATA, faults=faults)
    report = await run(manifest([{"url": url, "folder": "loras"}], retries=2), tmp_path)
    assert report.ok
    assert [e["reason"].split(" from ")[0] for e in events(tmp_path, "file_retry")] == [
        "HTTP 429",
        "HTTP 503",
    ]


# --- one classifier ------------------------------------------------------------------------

EXPECTED = {
    401: errors.AccessDenied,
    403: errors.AccessDenied,
    404: errors.NotFound,
    410: errors.NotFound,
    429: errors.RateLimited,
    500: errors.ServerError,
    418: errors.ServerError,
}


@pytest.mark.parametrize("status", sorted(EXPECTED))
async def test_probe_and_download_of_a_plain_host_agree_on_a_status(tmp_path, server, status):
    """The same status from the same plain host: ``check`` (the probe) and the download (the
    ranged GET after a good probe) report the same error class, hence the same check status."""
    bad = [(status, None)] * 20
    probed = server.add_file(f"p{status}/m.bin", DATA, faults=Faults(statuses=list(bad)))
    fetched = server.add_file(
        f"d{status}/m.bin", DATA, faults=Faults(statuses=list(bad), status_methods=("GET",))
    )
    m = manifest([{"url": probed, "folder": "loras"}, {"url": fetched, "folder": "vae"}], retries=0)
    report = await run(m, tmp_path)
    kinds = {e["url"].split("/")[-2]: e["kind"] for e in events(tmp_path, "file_failed")}
    assert kinds == {
        f"p{status}": EXPECTED[status].__name__,
        f"d{status}": EXPECTED[status].__name__,
    }
    assert all(f.status == "failed" for f in report.files)


@pytest.mark.parametrize(
    ("status", "headers", "token", "service", "expected"),
    [
        (401, {}, False, "civitai", errors.TokenRequired),
        (401, {}, False, "http", errors.AccessDenied),  # not "civitai_token_required" anywhere
        (401, {}, False, "cdn", errors.AccessDenied),
        (410, {}, False, "http", errors.NotFound),
        (410, {}, False, "civitai", errors.NotFound),
        (403, {}, False, "cdn", errors.SignatureExpired),
        (410, {}, False, "cdn", errors.SignatureExpired),
        (401, {"X-Error-Code": "GatedRepo"}, False, "huggingface", errors.GatedRepo),
        (403, {"X-Error-Code": "GatedRepo"}, True, "huggingface", errors.GatedNoAccess),
        (401, {}, True, "huggingface", errors.AccessDenied),
        (401, {}, False, "huggingface", errors.NotFound),
        (408, {}, False, "huggingface", errors.ServerError),
        (429, {"Retry-After": "7"}, False, "civitai", errors.RateLimited),
    ],
)
def test_classify_reads_a_status_once_for_every_service(status, headers, token, service, expected):
    url = "https://h.example/org/repo/resolve/main/m.safetensors?token=s3cr3tvalue"
    exc = classify(status, headers, b"", token, service, url=url)
    assert type(exc) is expected
    assert "s3cr3tvalue" not in str(exc)
    assert exc.retryable == (
        status in (408, 429) or status >= 500 or expected is errors.SignatureExpired
    )
    if status == 429:
        assert exc.retry_after == 7.0
