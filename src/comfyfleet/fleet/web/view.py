"""What the dashboard shows, computed from store rows, log lines and progress (pure)."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from comfyfleet.fleet.states import FINAL, PENDING, State
from comfyfleet.fleet.store import InstanceRow
from comfyfleet.fleet.web.sources import Progress
from comfyfleet.units import format_duration, format_size

_PHASE_LINE = re.compile(r"^\[([0-9T:.\-]+Z)\] phase (\w+)\s*$")
_STAMP = re.compile(r"^\[([0-9T:.\-]+Z)\] ")
_END_LINE = re.compile(r"^(?:\[[0-9T:.\-]+Z\] )?(?:\S+ )?PROVISIONING (?:COMPLETE|FAILED)")
#: phases that run side by side (drawn on two lanes)
PARALLEL = frozenset({"download", "install"})
#: seconds of samples the speed is averaged over
SPEED_WINDOW = 5.0


def _ts(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@dataclass
class Timeline:
    """Phase start times seen in one instance's log (and the run's end, once it ended)."""

    starts: list[tuple[str, float]] = field(default_factory=list)
    end: float | None = None
    last: float | None = None  # the latest timestamp seen (the marker line carries none)

    def feed(self, line: str) -> bool:
        """Take one log line; True when it changed the timeline."""
        stamp = _STAMP.match(line)
        if stamp:
            self.last = _ts(stamp.group(1)) or self.last
        m = _PHASE_LINE.match(line)
        if m and self.last is not None:
            if self.end is not None:  # a new run after an ended one
                self.starts, self.end = [], None
            if self.starts and self.starts[-1][0] == m.group(2):
                return False  # announced twice (the engine names its phase too)
            self.starts.append((m.group(2), self.last))
            return True
        if _END_LINE.match(line) and self.starts and self.end is None:
            self.end = self.last
            return True
        return False

    def spans(self, now: float) -> list[tuple[str, float, float, int]]:
        """(phase, start, end, lane) for each phase; a phase ends where the next one that
        does not run beside it starts."""
        out = []
        for i, (name, start) in enumerate(self.starts):
            end = self.end if self.end is not None else now
            for later, at in self.starts[i + 1 :]:
                if not (name in PARALLEL and later in PARALLEL):
                    end = at
                    break
            out.append((name, start, max(start, end), 1 if name == "install" else 0))
        return out


@dataclass
class Speed:
    """Bytes per second over the last few samples of ``bytes_done``."""

    samples: list[tuple[float, int]] = field(default_factory=list)

    def feed(self, at: float, done: int) -> None:
        """Record one sample (a smaller count restarts: a new run)."""
        if self.samples and done < self.samples[-1][1]:
            self.samples.clear()
        self.samples.append((at, done))
        while len(self.samples) > 2 and at - self.samples[0][0] > SPEED_WINDOW:
            self.samples.pop(0)

    def value(self) -> float:
        """The current speed in bytes per second (0 without two samples)."""
        if len(self.samples) < 2:
            return 0.0
        (t0, b0), (t1, b1) = self.samples[0], self.samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0


@dataclass(frozen=True)
class InstanceView:
    """One table row, as the template renders it."""

    id: str
    provider: str
    provider_id: str
    gpu: str
    state: str
    phase: str
    bytes_done: int
    bytes_total: int
    speed: float
    dph: float
    age: str
    lease_id: str
    reason: str

    @property
    def percent(self) -> float:
        """Download progress in percent (0 when the total is unknown)."""
        return min(100.0, 100.0 * self.bytes_done / self.bytes_total) if self.bytes_total else 0.0

    @property
    def bytes_text(self) -> str:
        """``1.0 GiB / 4.0 GiB``, or empty before the download started."""
        if not self.bytes_total:
            return ""
        return f"{format_size(self.bytes_done)} / {format_size(self.bytes_total)}"

    @property
    def speed_text(self) -> str:
        """``12.0 MiB/s`` while bytes move."""
        return f"{format_size(self.speed)}/s" if self.speed > 0 else ""


def age_text(seconds: float) -> str:
    """``<1m``, ``12m`` or ``3h05m``: minutes at most, so a row changes once a minute, not
    on every pass (200 rows re-rendered each pass would keep the browser busy)."""
    minutes = int(max(0.0, seconds) // 60)
    if minutes < 1:
        return "<1m"
    if minutes < 60:
        return f"{minutes}m"
    return f"{minutes // 60}h{minutes % 60:02d}m"


def instance_view(
    row: InstanceRow, progress: Progress | None, speed: float, phase: str | None, now: float
) -> InstanceView:
    """The row's view: store columns, plus the provision's phase and progress."""
    provisioning = row.state in (State.PROVISIONING, State.RELEASING)
    return InstanceView(
        id=row.id,
        provider=row.provider_kind,
        provider_id=row.provider_id or "",
        gpu=row.gpu_name or "",
        state=row.state.value,
        phase=(phase or (progress.phase if progress else None) or "") if provisioning else "",
        bytes_done=progress.bytes_done if progress else 0,
        bytes_total=progress.bytes_total if progress else 0,
        speed=speed if provisioning else 0.0,
        dph=row.dph,
        age=age_text(now - row.created_at),
        lease_id=row.lease_id or "",
        reason=row.failure_reason or "",
    )


@dataclass(frozen=True)
class Totals:
    """The header figures."""

    ready: int
    provisioning: int
    leased: int
    spend_per_hour: float
    spend_today: float


def totals(rows: list[InstanceRow], now: float) -> Totals:
    """Counts by state, $/h of the live rows and the spend since 00:00 UTC (all rows)."""
    midnight = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0).timestamp()
    live = [r for r in rows if r.state not in FINAL]
    today = 0.0
    for r in rows:
        end = r.state_since if r.state in FINAL else now
        hours = max(0.0, end - max(r.created_at, midnight)) / 3600
        today += r.dph * hours
    return Totals(
        ready=sum(r.state is State.READY for r in live),
        provisioning=sum(r.state in PENDING for r in live),
        leased=sum(r.state is State.LEASED for r in live),
        spend_per_hour=sum(r.dph for r in live),
        spend_today=today,
    )


def timeline_svg_spans(
    tl: Timeline, now: float | None = None, width: float = 240.0
) -> list[dict[str, object]]:
    """Rectangles (x, w, lane, phase, seconds) scaled into ``width`` for the inline SVG."""
    now = time.time() if now is None else now
    spans = tl.spans(now)
    if not spans:
        return []
    t0 = min(s for _, s, _, _ in spans)
    t1 = max(e for _, _, e, _ in spans)
    scale = width / max(t1 - t0, 1e-3)
    return [
        {
            "phase": name,
            "x": round((s - t0) * scale, 1),
            "w": round(max((e - s) * scale, 1.0), 1),
            "lane": lane,
            "seconds": format_duration(e - s),
        }
        for name, s, e, lane in spans
    ]
