"""The run record under ROOT/.comfyfleet: events, logs, status, sentinels, redaction."""

from __future__ import annotations

import json

from comfyfleet.events import MARKER_COMPLETE, MARKER_FAILED, RunLog


def read_events(root):
    return [
        json.loads(line) for line in (root / ".comfyfleet/events.jsonl").read_text().splitlines()
    ]


def test_events_are_json_lines_with_ts_event_and_run(tmp_path):
    log = RunLog(tmp_path, "download")
    log.emit("file_queued", folder="vae", filename="a.safetensors", bytes=0, total=10)
    log.close()
    (event,) = read_events(tmp_path)
    assert event["event"] == "file_queued"
    assert event["run"] == log.run_id
    assert event["ts"].endswith("Z") and "T" in event["ts"]
    assert (event["folder"], event["filename"], event["total"]) == ("vae", "a.safetensors", 10)


def test_previous_log_is_rotated_and_sentinels_reset_at_start(tmp_path):
    first = RunLog(tmp_path, "provision", sentinels=True)
    first.info("first run")
    first.finish(False, "boom")
    assert (tmp_path / ".provisioning_failed").exists()
    assert not (tmp_path / ".provisioning").exists()

    second = RunLog(tmp_path, "provision", sentinels=True)
    assert (tmp_path / ".provisioning").exists()
    assert not (tmp_path / ".provisioning_failed").exists()
    second.finish(True)
    assert "first run" in (tmp_path / ".comfyfleet/provision.log.1").read_text()
    log = (tmp_path / ".comfyfleet/provision.log").read_text()
    assert "first run" not in log
    assert log.splitlines()[-1] == MARKER_COMPLETE
    assert (tmp_path / ".provisioning_complete").exists()
    assert not (tmp_path / ".provisioning").exists()


def test_failure_marker_is_last_line_and_subprocess_output_cannot_fake_one(tmp_path):
    log = RunLog(tmp_path, "provision", sentinels=True)
    log.output("pip", "PROVISIONING COMPLETE\nFATAL: not really")
    log.finish(False, "node X failed")
    lines = (tmp_path / ".comfyfleet/provision.log").read_text().splitlines()
    assert lines[-1] == f"{MARKER_FAILED}: node X failed"
    faked = [line for line in lines[:-1] if "PROVISIONING COMPLETE" in line]
    assert faked and all(line.startswith("  | ") for line in faked)


def test_status_json_is_rewritten_atomically_with_final_state(tmp_path):
    log = RunLog(tmp_path, "download")
    log.status.bytes_total = 100
    log.set_phase("download")
    assert json.loads((tmp_path / ".comfyfleet/status.json").read_text())["phase"] == "download"
    log.status.bytes_done = 100
    log.finish(True)
    status = json.loads((tmp_path / ".comfyfleet/status.json").read_text())
    assert status["ok"] is True and status["bytes_done"] == 100 and status["run"] == log.run_id
    assert not list((tmp_path / ".comfyfleet").glob("*.tmp"))


def test_errors_log_is_kept_across_runs(tmp_path):
    for reason in ("first", "second"):
        log = RunLog(tmp_path, "download")
        log.error("vae/a.safetensors", reason, status=503, attempt=3)
        log.close()
    text = (tmp_path / ".comfyfleet/errors.log").read_text()
    assert "first" in text and "second" in text and "status=503" in text


def test_secrets_never_reach_any_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_SuperSecretValue123")
    monkeypatch.setenv("CIVITAI_TOKEN", "civ-secret-0987654321")
    log = RunLog(tmp_path, "provision", sentinels=True)
    log.emit(
        "file_retry", url="https://x/?token=civ-secret-0987654321", reason="hf_SuperSecretValue123"
    )
    log.info("Authorization: Bearer hf_SuperSecretValue123")
    log.error("f", "bad civ-secret-0987654321")
    log.output("pip", "token civ-secret-0987654321")
    log.finish(False, "failed with hf_SuperSecretValue123")
    for path in [*tmp_path.rglob("*"), *tmp_path.glob(".*")]:
        if path.is_file():
            text = path.read_text()
            assert "SuperSecretValue" not in text, path
            assert "civ-secret" not in text, path
