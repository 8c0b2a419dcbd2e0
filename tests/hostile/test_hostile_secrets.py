"""No URL secret survives an aiohttp error: every client error class, raised with a URL that
carries ``?token=``, ``X-Amz-Signature`` and a ``user:password@``, leaves no secret in
errors.log, events.jsonl, provision.log, status.json, the ``--json`` document or stderr."""

from __future__ import annotations

import json
import ssl

import aiohttp
import pytest
from aiohttp import client_exceptions
from aiohttp.client_reqrep import ConnectionKey, RequestInfo
from multidict import CIMultiDict, CIMultiDictProxy
from typer.testing import CliRunner
from yarl import URL

from comfyfleet.cli import _register, app
from comfyfleet.testing.modelserver import make_safetensors

from .conftest import manifest_toml, state_files

_register()

TOKEN = "tok3nVALUEqq81"
SIGNATURE = "a8f5f167f44f4964e6c998dee827110c"
PASSWORD = "pAssw0rdZZ19"
SECRETS = (TOKEN, SIGNATURE, PASSWORD)

#: every client error class aiohttp defines (enumerated, so a new one is covered too)
ERROR_CLASSES = sorted(
    (
        c
        for c in vars(client_exceptions).values()
        if isinstance(c, type) and issubclass(c, aiohttp.ClientError)
    ),
    key=lambda c: c.__name__,
)


def build(cls: type[aiohttp.ClientError], url: str) -> aiohttp.ClientError:
    """An instance of ``cls`` whose text embeds ``url`` wherever the class lets it."""
    yurl = URL(url)
    info = RequestInfo(yurl, "GET", CIMultiDictProxy(CIMultiDict()), yurl)
    key = ConnectionKey(yurl.host or "", yurl.port or 80, False, True, yurl, None, None, None)
    candidates = [
        lambda: cls(info, (), status=502, message=f"bad gateway for {url}"),  # response errors
        lambda: cls(key, ssl.SSLCertVerificationError(1, f"certificate mismatch for {url}")),
        lambda: cls(key, OSError(111, f"connect refused for {url}")),
        lambda: cls(url, key, OSError(111, f"connect refused for {url}")),  # unix sockets
        lambda: cls(yurl, f"redirect to {url}"),  # InvalidURL and its kin
        lambda: cls(b"\x00" * 32, b"\x01" * 32, yurl.host, yurl.port),  # fingerprint mismatch
        lambda: cls(f"failed while talking to {url}"),
    ]
    for make in candidates:
        try:
            exc = make()
            str(exc)
        except Exception:
            continue
        return exc
    raise AssertionError(f"cannot build {cls.__name__}")


@pytest.fixture
def secret_url(server):
    server.add_file("m.bin", make_safetensors(4096))
    host = f"{server.host}:{server.port}"
    return (
        f"http://user:{PASSWORD}@{host}/files/m.bin?token={TOKEN}"
        f"&X-Amz-Signature={SIGNATURE}&X-Amz-Expires=3600"
    )


def assert_clean(where: str, text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret} leaked into {where}:\n{text}"


@pytest.mark.parametrize("phase", ["probe", "transfer"])
@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_no_secret_of_an_aiohttp_error_reaches_any_output(
    cls, phase, secret_url, tmp_path, monkeypatch
):
    build(cls, secret_url)  # fails here, loudly, if aiohttp grew a class we cannot build
    raised: list[str] = []
    real_request = aiohttp.ClientSession._request

    async def failing_request(self, method, str_or_url, *args, **kwargs):
        # The probe is a HEAD; the transfer is the GET of the bytes (with its Range).
        if (method == "HEAD") == (phase == "probe"):
            exc = build(cls, str(str_or_url))
            raised.append(f"{exc} {exc!r}")
            raise exc
        return await real_request(self, method, str_or_url, *args, **kwargs)

    monkeypatch.setattr(aiohttp.ClientSession, "_request", failing_request)
    path = manifest_toml(
        tmp_path / "m.toml",
        [{"url": secret_url, "folder": "loras", "filename": "m.bin"}],
        retries=0,
    )
    root = tmp_path / "root"
    result = CliRunner().invoke(app, ["download", str(path), "--root", str(root), "--json"])

    assert raised, "the injected error was never raised"
    if cls is not client_exceptions.ServerFingerprintMismatch:  # its text holds no URL
        assert any(s in raised[0] for s in SECRETS), "the error text carried no secret"
    assert result.exit_code == 1, result.output
    doc = json.loads(result.stdout)
    assert doc["files"][0]["status"] == "failed"
    assert_clean("--json", result.stdout)
    assert_clean("stderr", result.stderr)
    files = state_files(root)
    for name in ("errors.log", "events.jsonl", "provision.log", "status.json"):
        assert name in files
        assert_clean(name, files[name])
    assert "loras/m.bin: FAILED" in files["errors.log"]  # the failure itself was recorded
