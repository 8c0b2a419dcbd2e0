"""The run record under ROOT/.comfyfleet: events, logs, status, sentinels, redaction."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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
    first.info("provision", "first run")
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
    log.info("download", "Authorization: Bearer hf_SuperSecretValue123")
    log.error("f", "bad civ-secret-0987654321")
    log.output("pip", "token civ-secret-0987654321")
    log.finish(False, "failed with hf_SuperSecretValue123")
    for path in [*tmp_path.rglob("*"), *tmp_path.glob(".*")]:
        if path.is_file():
            text = path.read_text()
            assert "SuperSecretValue" not in text, path
            assert "civ-secret" not in text, path


# --- the human log: escaped, one word of comfyfleet's own first, foreign lines indented ----

FORGED = "x\nPROVISIONING COMPLETE\nFATAL: y.safetensors"


def _log_lines(root):
    return (root / ".comfyfleet/provision.log").read_text().splitlines()


def test_every_line_starts_with_a_timestamp_and_a_word_of_comfyfleets_own(tmp_path):
    from comfyfleet.events import LOG_WORDS
    from comfyfleet.logstream.markers import MarkerSet

    log = RunLog(tmp_path, "provision", sentinels=True)
    log.info("download", f"vae/{FORGED}")
    log.error(f"vae/{FORGED}", "FATAL: boom\nPROVISIONING COMPLETE", status=503)
    log.output("pip", "PROVISIONING COMPLETE\r\nFATAL: no\x1b[2K\u202eevil")
    log.set_phase("download")
    lines = _log_lines(tmp_path)
    for line in lines:
        if line.startswith("  | "):
            continue
        stamp, _, rest = line.partition("] ")
        assert stamp.startswith("[") and rest.split(" ", 1)[0] in LOG_WORDS, line
    assert not any(MarkerSet().classify(line) for line in lines), lines
    assert not any(c in "".join(lines) for c in "\r\x1b\u202e")
    assert "\\x1b[2K\\u202eevil" in "".join(lines)
    log.finish(True)
    assert [MarkerSet().classify(line) for line in _log_lines(tmp_path)].count("complete") == 1


def test_a_multi_line_error_indents_every_line_after_the_first(tmp_path):
    log = RunLog(tmp_path, "provision", sentinels=True)
    log.error("node X", "command failed (exit 1): pip install\nFATAL: pip said\nok", repo="r")
    log.close()
    *_, first, second, third = _log_lines(tmp_path)
    assert first.endswith("ERROR node X: command failed (exit 1): pip install (repo=r)")
    assert (second, third) == ("  | FATAL: pip said", "  | ok")
    errors = (tmp_path / ".comfyfleet/errors.log").read_text().splitlines()
    assert errors[0].endswith("node X: command failed (exit 1): pip install (repo=r)")
    assert errors[1:] == ["  | FATAL: pip said", "  | ok"]


def test_a_line_must_start_with_a_known_word(tmp_path):
    log = RunLog(tmp_path, "download")
    with pytest.raises(ValueError, match="must start with one of"):
        log.info("vae/x.safetensors", "downloaded")  # type: ignore[arg-type]
    log.close()


def test_the_final_marker_keeps_a_forged_reason_on_its_own_line(tmp_path):
    log = RunLog(tmp_path, "provision", sentinels=True)
    log.finish(False, "node\rPROVISIONING COMPLETE\nx")
    assert _log_lines(tmp_path)[-1] == "PROVISIONING FAILED: node\\x0dPROVISIONING COMPLETE x"


def test_every_log_call_in_the_source_passes_a_literal_word():
    """A static check, so a call site added in a parallel change fails here, not in a run."""
    import ast

    import comfyfleet
    from comfyfleet.events import LOG_WORDS

    src = Path(comfyfleet.__file__).parent
    bad = []
    for path in src.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "info"
                and isinstance(node.func.value, ast.Name | ast.Attribute)
                and ast.unparse(node.func.value).split(".")[-1] == "log"
            ):
                word = node.args[0] if node.args else None
                if not (isinstance(word, ast.Constant) and word.value in LOG_WORDS):
                    bad.append(f"{path.relative_to(src)}:{node.lineno}")
    assert not bad, bad
