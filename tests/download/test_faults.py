"""Injected server faults: each case checks the outcome, the errors.log entry, and that no
corrupt file ever reaches a final path."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from comfyfleet.download import download_all, load_verified
from comfyfleet.events import RunLog
from comfyfleet.retry import parse_retry_after

from .conftest import blob, errors_log, events, manifest, model_dir, no_corrupt_final, run, sha

MB = 1_000_000


def entry(url: str, data: bytes | None = None, **kw):
    return {"url": url, "folder": "checkpoints", **({"sha256": sha(data)} if data else {}), **kw}


async def test_connection_reset_resumes_the_range_from_the_last_byte(server, tmp_path):
    data = blob(2 * MB, 1)
    url = server.add_file("reset.safetensors", data, reset_after=500_000, reset_times=2)
    m = manifest([entry(url, data)], connections_per_file=1, segment_size="8MiB")
    report = await run(m, tmp_path)
    assert report.ok and report.files[0].status == "verified"
    gets = [r.range for r in server.requests_for("reset.safetensors", "GET")]
    assert gets[0] == f"bytes=0-{len(data) - 1}"
    starts = [int(r.split("=")[1].split("-")[0]) for r in gets[1:]]
    assert starts and all(s > 0 for s in starts), gets  # resumed, never restarted at 0
    assert "dropped" in errors_log(tmp_path)
    assert report.bytes == len(data)
    no_corrupt_final(tmp_path, {"reset.safetensors": data})


@pytest.mark.parametrize("status", [503, 429])
async def test_503_and_429_honour_retry_after(server, tmp_path, status):
    data = blob(1 * MB, 2)
    url = server.add_file("busy.safetensors", data)
    m = manifest([entry(url, data)], connections_per_file=1)
    log = RunLog(tmp_path, "download")

    def inject(ev):  # after resolve, so the download's own GETs meet the statuses
        if ev["event"] == "file_started":
            server.plain["busy.safetensors"].faults.statuses = [(status, "1"), (status, "1")]

    log.subscribe(inject)
    t0 = time.monotonic()
    report = await download_all(m, tmp_path, log)
    log.close()
    assert report.ok and time.monotonic() - t0 >= 1.9  # waited Retry-After twice
    retries = events(tmp_path, "file_retry")
    assert [r["delay"] for r in retries] == [1.0, 1.0]
    assert f"HTTP {status}" in errors_log(tmp_path)
    no_corrupt_final(tmp_path, {"busy.safetensors": data})


def test_retry_after_accepts_seconds_and_http_dates():
    assert parse_retry_after("7") == 7.0
    now = 1_700_000_000.0
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:40 GMT", now=now) == pytest.approx(20.0)
    assert parse_retry_after("soon") is None


async def test_stalled_connection_is_dropped_and_its_range_retried(server, tmp_path):
    data = blob(2 * MB, 3)
    url = server.add_file("stall.safetensors", data, stall_after=300_000, stall_seconds=3)
    m = manifest([entry(url, data)], connections_per_file=1, segment_size="8MiB")
    t0 = time.monotonic()
    report = await run(m, tmp_path)
    assert report.ok
    assert time.monotonic() - t0 < 2.9  # caught by throughput in ~1 s, not after the stall
    assert "Stalled" in errors_log(tmp_path) and "below" in errors_log(tmp_path)
    no_corrupt_final(tmp_path, {"stall.safetensors": data})


async def test_server_ignoring_range_falls_back_to_one_stream(server, tmp_path):
    data = blob(3 * MB, 4)
    url = server.add_file("norange.safetensors", data, ignore_range=True)
    report = await run(manifest([entry(url, data)]), tmp_path)
    assert report.ok and report.files[0].status == "verified"
    assert any(r.range is None for r in server.requests_for("norange", "GET"))
    assert "ignored the Range header" in errors_log(tmp_path) or all(
        r.range is None for r in server.requests_for("norange", "GET")
    )
    no_corrupt_final(tmp_path, {"norange.safetensors": data})


async def test_wrong_bytes_fail_the_checksum_and_never_land(server, tmp_path):
    data = blob(2 * MB, 5)
    url = server.add_file("bad.safetensors", data, corrupt=True)
    report = await run(manifest([entry(url, data)]), tmp_path)
    assert not report.ok and report.files[0].status == "failed"
    assert "does not match" in report.files[0].error
    assert "ChecksumMismatch" in errors_log(tmp_path)
    assert not (model_dir(tmp_path) / "bad.safetensors").exists()
    assert not (model_dir(tmp_path) / "bad.safetensors.part").exists()  # known-bad: discarded


async def test_wrong_bytes_without_a_sha256_fail_the_safetensors_check(server, tmp_path):
    data = blob(2 * MB, 6)
    url = server.add_file("bad2.safetensors", data, corrupt=True)
    report = await run(manifest([entry(url)]), tmp_path)
    assert report.files[0].status == "failed" and "safetensors" in report.files[0].error
    assert "CorruptFile" in errors_log(tmp_path)
    no_corrupt_final(tmp_path, {})


async def test_html_page_instead_of_the_model_fails(server, tmp_path):
    data = blob(1 * MB, 7)
    url = server.add_file("login.safetensors", data, html=True)
    report = await run(manifest([entry(url)]), tmp_path)
    assert report.files[0].status == "failed"
    assert "html" in report.files[0].error.lower()  # caught when resolving (Content-Type)
    assert "NotAModel" in errors_log(tmp_path)
    no_corrupt_final(tmp_path, {})


async def test_html_body_arriving_during_download_fails(server, tmp_path):
    data = blob(1 * MB, 8)
    url = server.add_file("late.safetensors", data)
    m = manifest([entry(url)], retries=1)
    log = RunLog(tmp_path, "download")
    log.subscribe(
        lambda ev: (
            ev["event"] == "file_started"
            and setattr(server.plain["late.safetensors"].faults, "html", True)
        )
    )
    report = await download_all(m, tmp_path, log)
    log.close()
    assert report.files[0].status == "failed" and "HTML" in report.files[0].error
    assert "NotAModel" in errors_log(tmp_path)
    no_corrupt_final(tmp_path, {})


async def test_truncated_body_is_resumed(server, tmp_path):
    data = blob(2 * MB, 9)
    url = server.add_file("trunc.safetensors", data, truncate=700_000, truncate_times=1)
    m = manifest([entry(url, data)], connections_per_file=1, segment_size="8MiB")
    report = await run(m, tmp_path)
    assert report.ok
    assert "Dropped" in errors_log(tmp_path)
    no_corrupt_final(tmp_path, {"trunc.safetensors": data})


async def test_always_truncated_body_fails_after_the_retries(server, tmp_path):
    data = blob(2 * MB, 10)
    url = server.add_file("trunc2.safetensors", data, truncate=0, truncate_times=1000)
    m = manifest([entry(url, data)], connections_per_file=1, retries=2)
    report = await run(m, tmp_path)
    assert not report.ok and report.files[0].status == "failed"
    log = errors_log(tmp_path)
    assert "FAILED" in log and "attempt=" in log
    no_corrupt_final(tmp_path, {})


async def test_civitai_redirect_to_a_cdn_that_rejects_authorization(server, tmp_path, monkeypatch):
    monkeypatch.setenv("CIVITAI_ENDPOINT", server.base_url)
    monkeypatch.setenv("CIVITAI_TOKEN", "civitai-secret-123")
    data = blob(2 * MB, 11)
    url = server.add_civitai(
        4242, data, "model.safetensors", token_required=True, valid_tokens=("civitai-secret-123",)
    )
    report = await run(manifest([entry(url)]), tmp_path)
    assert report.ok, report.files[0].error
    assert report.files[0].sha256 == sha(data)  # verified against Civitai's API hash
    cdn = server.requests_for("/cdn/", "GET")
    assert cdn and all("Authorization" not in r.headers for r in cdn)
    for p in (tmp_path / ".comfyfleet").iterdir():
        assert "civitai-secret-123" not in p.read_text()
    no_corrupt_final(tmp_path, {"model.safetensors": data})


async def test_expired_cdn_signature_is_resolved_again(server, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", server.base_url)
    from comfyfleet.testing.modelserver import Faults

    data = blob(2 * MB, 12)
    url = server.add_hf_file("org/repo", "unet.safetensors", data, faults=Faults(expired_times=1))
    report = await run(manifest([entry(url, folder="diffusion_models")]), tmp_path)
    assert report.ok, report.files[0].error
    assert len(server.requests_for("/resolve/")) >= 2
    assert "SignatureExpired" in errors_log(tmp_path)
    assert (model_dir(tmp_path, "diffusion_models") / "unet.safetensors").read_bytes() == data


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True)  # fmt: skip
    return r.returncode == 0


async def test_disk_full_fails_early_with_a_clear_error(server, tmp_path):
    small = tmp_path / "small"
    mounted = _mount_tmpfs(small, "3m")
    if not mounted:
        pytest.skip("cannot mount a tmpfs here (see test_disk_full_mid_write for the hook)")
    try:
        ok_data = blob(1 * MB, 13)
        big = blob(4 * MB, 14)
        urls = [server.add_file("big.safetensors", big), server.add_file("ok.safetensors", ok_data)]
        m = manifest([entry(urls[0], big), entry(urls[1], ok_data)])
        report = await run(m, small)
        by_name = {f.filename: f for f in report.files}
        assert by_name["big.safetensors"].status == "failed"
        assert "no space" in by_name["big.safetensors"].error
        assert by_name["ok.safetensors"].status == "verified"
        assert "DiskFull" in errors_log(small)
        no_corrupt_final(small, {"ok.safetensors": ok_data})
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


async def test_disk_full_mid_write_via_the_writer_hook(server, tmp_path, monkeypatch):
    import errno

    from comfyfleet.download import partfile

    def hook(path, offset, length):
        if path.name.startswith("full") and offset >= 1_000_000:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(partfile, "write_fault", hook)
    data = blob(3 * MB, 15)
    url = server.add_file("full.safetensors", data)
    report = await run(manifest([entry(url, data)]), tmp_path)
    assert report.files[0].status == "failed" and "no space" in report.files[0].error
    assert "DiskFull" in errors_log(tmp_path)
    assert load_verified(tmp_path) == {}
    no_corrupt_final(tmp_path, {})
