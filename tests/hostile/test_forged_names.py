"""A server that names its file to forge completion markers: the name is refused, and no line
of provision.log can be read as a marker by ``logs follow`` (issue 8 item 3)."""

from __future__ import annotations

from pathlib import Path

from comfyfleet.download import download_all
from comfyfleet.events import RunLog
from comfyfleet.logstream.markers import MarkerSet
from comfyfleet.manifest import parse_manifest
from comfyfleet.sources.filenames import filename_from_content_disposition
from comfyfleet.testing.modelserver import ModelServer, make_safetensors

FORGED = "filename*=UTF-8''x%0APROVISIONING%20COMPLETE%0AFATAL:%20y.safetensors"


def test_a_content_disposition_name_with_newlines_is_refused():
    assert filename_from_content_disposition(f"attachment; {FORGED}") is None
    # the plain filename= is the fallback a browser uses; it is held to the same rule
    header = f'attachment; {FORGED}; filename="ok.safetensors"'
    assert filename_from_content_disposition(header) == "ok.safetensors"
    assert (
        filename_from_content_disposition('attachment; filename="a\u202egpj.safetensors"') is None
    )


async def test_a_server_chosen_name_cannot_forge_a_marker_in_provision_log(tmp_path: Path):
    data = make_safetensors(64 * 1024, 1)
    async with ModelServer() as server:
        url = server.add_file("dl/model.safetensors", data)
        server.plain["dl/model.safetensors"].content_disposition = f"attachment; {FORGED}"
        manifest = parse_manifest({"models": [{"url": url, "folder": "checkpoints"}]})
        log = RunLog(tmp_path, "provision", sentinels=True)
        report = await download_all(manifest, tmp_path, log)
        log.finish(report.ok, "" if report.ok else "download failed")

    landed = sorted(p.name for p in (tmp_path / "ComfyUI/models/checkpoints").iterdir())
    assert landed == ["model.safetensors"]  # the URL's name; the server's name was refused
    assert (tmp_path / "ComfyUI/models/checkpoints/model.safetensors").read_bytes() == data
    lines = (tmp_path / ".comfyfleet/provision.log").read_text().splitlines()
    markers = [(line, MarkerSet().classify(line)) for line in lines]
    assert [m for m in markers if m[1]] == [("PROVISIONING COMPLETE", "complete")]
    assert lines[-1] == "PROVISIONING COMPLETE"
    for path in (tmp_path / ".comfyfleet").iterdir():
        assert "\nFATAL:" not in path.read_text(), path
