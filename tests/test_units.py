"""Sizes (``100MiB``) and durations (``1h30m``): exact values, round trips, clean errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from comfyfleet.units import format_duration, format_size, parse_duration, parse_size

UNITS = {"": 1, "B": 1, "KB": 1000, "MB": 10**6, "GB": 10**9, "TB": 10**12,
         "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}  # fmt: skip


@pytest.mark.parametrize(
    ("text", "value"),
    [("0", 0), ("1234", 1234), ("256KiB", 262144), ("100MiB", 104857600), ("1.5GB", 1_500_000_000),
     (" 2 gib ", 2 * 1024**3), ("10k", 10_000), (42, 42), (3.9, 3)],
)  # fmt: skip
def test_parse_size_examples(text, value):
    assert parse_size(text) == value


@given(st.integers(0, 10**6), st.sampled_from(sorted(UNITS)))
def test_parse_size_is_number_times_unit(n, unit):
    assert parse_size(f"{n}{unit}") == n * UNITS[unit]
    assert parse_size(f"{n} {unit.lower()}") == n * UNITS[unit]


@given(st.one_of(st.text(max_size=20), st.booleans(), st.integers(max_value=-1), st.floats()))
def test_parse_size_accepts_or_raises_value_error_only(value):
    try:
        result = parse_size(value)
    except ValueError as exc:
        assert str(exc)
    else:
        assert isinstance(result, int) and result >= 0


@pytest.mark.parametrize(
    "bad", ["", "MiB", "-1", "1.2.3MB", "10 parsecs", "1e9", True, float("inf"), float("nan")]
)
def test_parse_size_rejects(bad):
    with pytest.raises(ValueError):
        parse_size(bad)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("60s", 60), ("15m", 900), ("1h30m", 5400), ("250ms", 0.25), ("2d", 172800),
     ("1h 2m 3s", 3723), (5, 5.0), ("1.5h", 5400)],
)  # fmt: skip
def test_parse_duration_examples(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@given(
    st.lists(
        st.tuples(st.integers(0, 1000), st.sampled_from(["ms", "s", "m", "h", "d"])),
        min_size=1,
        max_size=4,
    )
)
def test_parse_duration_sums_its_parts(parts):
    factor = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    text = "".join(f"{n}{u}" for n, u in parts)
    assert parse_duration(text) == pytest.approx(sum(n * factor[u] for n, u in parts))


@given(st.one_of(st.text(max_size=20), st.booleans(), st.floats(allow_nan=True)))
def test_parse_duration_accepts_or_raises_value_error_only(value):
    try:
        result = parse_duration(value)
    except ValueError as exc:
        assert str(exc)
    else:
        assert result >= 0 and result == result  # not NaN


@pytest.mark.parametrize(
    "bad", ["", "m", "15 minutes", "-5s", "1h-30m", "soon", True, float("inf"), float("nan")]
)
def test_parse_duration_rejects(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_formatting():
    assert format_size(512) == "512 B" and format_size(1536) == "1.5 KiB"
    assert format_duration(4.24) == "4.2s" and format_duration(185) == "3m05s"
    assert format_duration(3720) == "1h02m"
