"""Agent pieces that need no provisioning run: progress, secrets input, old Pythons."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from comfyfleet import credentials
from comfyfleet.errors import HostKeyError
from comfyfleet.fleet.agent import (
    AgentError,
    AgentOptions,
    EventMarkers,
    HostKeyPolicy,
    Progress,
    ProvisionAgent,
)


def test_progress_folds_file_events_into_totals_and_speed():
    p = Progress()
    assert p.update({"event": "phase_started", "phase": "download"})
    p.update({"event": "file_started", "folder": "vae", "filename": "a", "bytes": 0, "total": 100})
    p.update({"event": "file_progress", "folder": "vae", "filename": "a", "bytes": 40,
              "total": 100, "speed": 1000})  # fmt: skip
    p.update({"event": "file_progress", "folder": "loras", "filename": "b", "bytes": 5,
              "total": 50, "speed": 500})  # fmt: skip
    assert p.to_json() == {"phase": "download", "bytes_done": 45, "bytes_total": 150,
                           "speed": 1500}  # fmt: skip
    p.update({"event": "file_verified", "folder": "vae", "filename": "a", "bytes": 100,
              "total": 100})  # fmt: skip
    assert (p.bytes_done, p.speed) == (105, 500)
    assert not p.update({"event": "validation", "name": "x"})
    p.update({"event": "run_failed", "reason": "disk full"})
    assert (p.outcome, p.reason, p.phase, p.speed) == ("failed", "disk full", "failed", 0.0)


def test_event_markers_end_on_the_terminal_event_only():
    m = EventMarkers()
    quoted = json.dumps({"event": "file_failed", "error": 'said "run_completed"'}).encode()
    assert m.first_match((quoted, b"not json run_failed")) is None
    done = json.dumps({"event": "run_completed", "seconds": 1}).encode()
    assert m.first_match((quoted, done))[0] == "complete"
    assert m.first_match((json.dumps({"event": "run_failed"}).encode(),))[0] == "failed"


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("not json", "not JSON"),
        ('["HF_TOKEN"]', "JSON object"),
        ('{"AWS_SECRET": "x"}', "not one the provisioner uses"),
        ('{"HF_TOKEN": 5}', "non-empty token"),
        ('{"HF_TOKEN": "two words"}', "non-empty token"),
    ],
)
def test_secrets_input_is_validated_without_echoing_values(text, error):
    with pytest.raises(ValueError, match=error) as caught:
        credentials.parse_secrets(text)
    assert "two words" not in str(caught.value)


def test_given_secrets_stay_out_of_the_environment(monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(credentials, "_given", {})
    credentials.give(credentials.parse_secrets('{"HF_TOKEN": "hf_abcdefghijkl"}'))
    from comfyfleet.redact import redact_text
    from comfyfleet.sources.auth import auth_headers, hf_token

    assert hf_token() == "hf_abcdefghijkl" and "HF_TOKEN" not in os.environ
    url = "http://127.0.0.1:1/x"
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:1")
    assert auth_headers(url)["Authorization"] == "Bearer hf_abcdefghijkl"
    assert redact_text("token hf_abcdefghijkl!") == "token ***!"


def test_provision_cli_refuses_bad_secrets_with_exit_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", "from comfyfleet.cli import main; main()", "provision",
         str(tmp_path / "m.toml"), "--root", str(tmp_path / "r"), "--secrets-stdin"],
        input='{"HF_TOKEN": "hf_secretvalue", "OTHER": "x"}', capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "--secrets-stdin: secret 'OTHER'" in proc.stderr
    assert "hf_secretvalue" not in proc.stderr + proc.stdout
    assert not (tmp_path / "r").exists()


async def test_an_image_without_python_3_11_fails_with_one_clear_line(make_instance):
    inst = make_instance()
    # An image whose only Python is 3.9 (a stand-in interpreter: none that old is installed).
    fake = inst.home / "python3.9"
    fake.write_text(
        '#!/bin/sh\necho \'python ["/usr/bin/python3.9", [3, 9], "x86_64", ["glibc", "2.31"]]\'\n'
    )
    fake.chmod(0o755)
    options = AgentOptions(python=str(fake))
    agent = ProvisionAgent("i-old", inst.endpoint, HostKeyPolicy.pin(inst.host_key), options)
    with pytest.raises(AgentError, match=r"no Python >= 3.11 .*found: /usr/bin/python3.9 3.9"):
        await agent.install()
    await agent.close()
    assert not (inst.home / ".comfyfleet-agent").exists()  # nothing uploaded


async def test_operator_known_hosts_accepts_the_recorded_key_and_refuses_an_unknown_host(
    make_instance, sshd, tmp_path
):
    inst = make_instance()
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} {inst.host_key}\n")
    agent = ProvisionAgent("i-op", inst.endpoint, HostKeyPolicy.operator(known))
    assert await agent.connect() == inst.host_key
    await agent.close()
    known.write_text("")
    with pytest.raises(HostKeyError, match="is not in"):
        await ProvisionAgent("i-op", inst.endpoint, HostKeyPolicy.operator(known)).connect()
    assert known.read_text() == ""  # an operator's file is never written to
