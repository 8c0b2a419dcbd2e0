"""Completion markers (DESIGN.md matching rule) and the atomic checkpoint file."""

from __future__ import annotations

import json

import pytest

from comfyfleet.errors import UsageError
from comfyfleet.logstream import checkpoint
from comfyfleet.logstream.core import Counters, FileIdentity, Position
from comfyfleet.logstream.markers import MarkerSet


@pytest.mark.parametrize(
    ("line", "outcome"),
    [
        ("PROVISIONING COMPLETE", "complete"),
        ("   PROVISIONING COMPLETE in 12m", "complete"),
        ("[2026-01-02 03:04:05] PROVISIONING COMPLETE", "complete"),
        ("✅ PROVISIONING COMPLETE", "complete"),
        ("[12:00] ✅ ComfyUI setup complete", "complete"),
        ("PROVISIONING FAILED: disk full", "failed"),
        ("[12:00] FATAL: no GPU", "failed"),
        ("❌ CRITICAL ERROR: driver", "failed"),
        ("  | FATAL: printed by pip", None),  # subprocess output is indented to stay inert
        ("echo PROVISIONING COMPLETE", None),
        ("provisioning complete", None),
        ("", None),
    ],
)
def test_marker_matches_after_whitespace_timestamp_and_symbol(line, outcome):
    assert MarkerSet().classify(line) == outcome


def test_custom_markers_add_to_defaults_unless_disabled():
    both = MarkerSet.build(["READY"], ["BOOM"])
    assert both.classify("READY now") == "complete"
    assert both.classify("BOOM") == "failed"
    assert both.classify("FATAL: x") == "failed"
    only = MarkerSet.build(["READY"], None, defaults=False)
    assert only.classify("FATAL: x") is None
    assert only.classify("PROVISIONING COMPLETE") is None


def test_first_match_reports_the_first_marker_line():
    lines = (b"a", b"FATAL: one", b"PROVISIONING COMPLETE")
    assert MarkerSet().first_match(lines) == ("failed", "FATAL: one")
    assert MarkerSet().first_match((b"x", b"y")) is None


POS = Position(FileIdentity(5, 77, b"abc\n"), 4, 10, Counters(lines=2, bytes=10, last_line="x"))


def test_checkpoint_round_trips(tmp_path):
    path = tmp_path / "state"
    checkpoint.save(path, POS, source="h:/log")
    assert checkpoint.load(path, source="h:/log") == POS
    assert not (tmp_path / "state.tmp").exists()


def test_a_complete_temp_file_left_by_a_crash_wins(tmp_path):
    path = tmp_path / "state"
    checkpoint.save(path, Position(), source="s")
    newer = json.dumps(checkpoint.encode(POS, source="s"))
    (tmp_path / "state.tmp").write_text(newer)  # crash between fsync and rename
    assert checkpoint.load(path, source="s") == POS
    (tmp_path / "state.tmp").write_text(newer[:20])  # crash mid-write: ignored
    assert checkpoint.load(path, source="s") == Position()


def test_checkpoint_of_another_source_is_refused(tmp_path):
    path = tmp_path / "state"
    checkpoint.save(path, POS, source="a:/log")
    with pytest.raises(UsageError, match="belongs to a:/log"):
        checkpoint.load(path, source="b:/log")


def test_missing_checkpoint_means_start_from_the_beginning(tmp_path):
    assert checkpoint.load(tmp_path / "none", source="s") is None
