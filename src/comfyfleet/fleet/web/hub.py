"""One poller for every open dashboard: reads the store and the logs, pushes what changed.

Each pass renders only the fragments that differ from the last pass (a row, a timeline, new
log text, the totals) and hands one message to every subscriber, so ten open dashboards cost
what one does. The pass runs while someone listens (and once per page load).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from comfyfleet.fleet.states import FINAL
from comfyfleet.fleet.store import InstanceRow, Store
from comfyfleet.fleet.web.sources import LogSource, LogUpdate, Progress
from comfyfleet.fleet.web.view import Speed, Timeline, instance_view, timeline_svg_spans, totals
from comfyfleet.names import escape_controls

#: seconds between two passes while a dashboard is open
INTERVAL = 0.25
#: characters of log kept per instance for a newly opened page
TAIL = 32 * 1024
#: messages a slow subscriber may lag behind before it is dropped (its browser reconnects)
BACKLOG = 256
#: recent messages kept for a page that subscribes a moment after it was rendered
HISTORY = 64


@dataclass
class _Instance:
    run: str = ""
    offset: int = 0
    progress: Progress | None = None
    pending: bytes = b""
    text: str = ""
    decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))
    timeline: Timeline = field(default_factory=Timeline)
    speed: Speed = field(default_factory=Speed)
    row_html: str = ""
    tl_html: str = ""
    spans: list[dict[str, object]] = field(default_factory=list)


def _clean(text: str) -> str:
    """Log text safe to show: control and bidi characters escaped, lines kept."""
    return "\n".join(escape_controls(line) for line in text.split("\n"))


class Hub:
    """The dashboards' shared view of the pool."""

    def __init__(
        self,
        store: Store,
        source: LogSource,
        parts: Any,
        *,
        pool: str,
        interval: float = INTERVAL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.source = source
        self.parts = parts
        self.pool = pool
        self.interval = interval
        self.clock = clock
        self._inst: dict[str, _Instance] = {}
        self._order: list[str] = []
        self._totals_html = ""
        self._subs: set[asyncio.Queue[str]] = set()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        #: the number of passes that changed something (a page says which one it shows)
        self.version = 0
        self._history: deque[tuple[int, str]] = deque(maxlen=HISTORY)

    # --- subscribers ------------------------------------------------------------------------

    def subscribe(self, since: int | None = None) -> asyncio.Queue[str]:
        """A queue of messages (HTML fragments). A page rendered at version ``since`` first
        gets what changed after it; any other subscriber, the whole current view."""
        q: asyncio.Queue[str] = asyncio.Queue(BACKLOG)
        first = self._since(since)
        if first:
            q.put_nowait(first)
        self._subs.add(q)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="dashboard-hub")
        return q

    def _since(self, since: int | None) -> str:
        if since == self.version:
            return ""  # the page is current: re-sending 200 rows would block it for nothing
        if since is not None and self._history and since >= self._history[0][0] - 1:
            return "".join(m for v, m in self._history if v > since)
        return self.snapshot()

    def unsubscribe(self, q: asyncio.Queue[str]) -> None:
        """Stop sending to ``q`` (the loop stops with the last subscriber)."""
        self._subs.discard(q)

    def end_streams(self) -> None:
        """End every open stream (a server that shuts down waits for its connections)."""
        for q in list(self._subs):
            self._subs.discard(q)
            with contextlib.suppress(asyncio.QueueEmpty):
                while True:
                    q.get_nowait()
            q.put_nowait("")

    async def aclose(self) -> None:
        """End the streams and stop the loop."""
        self.end_streams()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while self._subs:
            started = time.monotonic()
            await self.update()
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))

    def _broadcast(self, message: str) -> None:
        for q in list(self._subs):
            try:
                q.put_nowait(message)
            except asyncio.QueueFull:
                self._subs.discard(q)
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()
                q.put_nowait("")  # "" = you fell behind: the stream ends, the browser resyncs

    # --- the view ----------------------------------------------------------------------------

    def items(self) -> list[dict[str, Any]]:
        """What the page renders: per instance its row HTML, log tail and timeline spans."""
        return [
            {"id": i, "row": self._inst[i].row_html, "text": self._inst[i].text,
             "spans": self._inst[i].spans}
            for i in self._order
        ]  # fmt: skip

    def totals_html(self) -> str:
        """The totals fragment of the last pass."""
        return self._totals_html

    def snapshot(self) -> str:
        """Every fragment of the current view (a new subscriber's first message)."""
        out = [self._totals_html]
        for i in self._order:
            st = self._inst[i]
            out.append(st.row_html.replace(">", ' data-into="rows">', 1))
            out.append(str(self.parts.panel(i, st.text, st.spans, True)))
        return "".join(out)

    async def update(self) -> str:
        """One pass: read, diff, broadcast; returns the message sent ("" when nothing changed)."""
        async with self._lock:
            message = await self._pass()
            if message:
                self.version += 1
                self._history.append((self.version, message))
        if message:
            self._broadcast(message)
        return message

    async def _pass(self) -> str:
        now = self.clock()
        rows = await self.store.rows(include_final=True)
        live = [r for r in rows if r.state not in FINAL]
        positions = {i: (st.run, st.offset) for i, st in self._inst.items()}
        updates = await self.source.poll(live, positions)
        frags: list[str] = []
        seen = set()
        for row in live:
            seen.add(row.id)
            frags += self._instance(row, updates.get(row.id), now)
        for gone in [i for i in self._order if i not in seen]:
            del self._inst[gone]
            frags.append(str(self.parts.removed(gone)))
        self._order = [r.id for r in live]
        t = str(self.parts.totals(totals(rows, now), self.pool))
        if t != self._totals_html:
            self._totals_html = t
            frags.append(t)
        return "".join(frags)

    def _instance(self, row: InstanceRow, upd: LogUpdate | None, now: float) -> list[str]:
        new = row.id not in self._inst
        st = self._inst.setdefault(row.id, _Instance())
        frags: list[str] = []
        reset = False
        added = ""
        if upd is not None:
            data = upd.data
            if upd.run != st.run or upd.offset != st.offset:
                reset = True  # a new run, or the log was cut: the panel starts again
                st.run, st.pending, st.text, st.timeline = upd.run, b"", "", Timeline()
                st.decoder.reset()
                if upd.offset > 0:  # a tail: drop the partial first line
                    data = data[data.find(b"\n") + 1 :]
            st.offset = upd.offset + len(upd.data)
            buf = st.pending + data
            cut = buf.rfind(b"\n") + 1  # whole lines only: a half line waits for its end
            st.pending = buf[cut:]
            if cut:
                added = _clean(st.decoder.decode(buf[:cut]))
                for line in added.splitlines():
                    st.timeline.feed(line)
                st.text = (st.text + added)[-TAIL:]
            if upd.progress is not None:
                st.progress = upd.progress
                st.speed.feed(now, upd.progress.bytes_done)
        progress = st.progress
        speed = progress.speed if progress and progress.speed is not None else st.speed.value()
        running = st.timeline.starts and st.timeline.end is None
        phase = st.timeline.starts[-1][0] if running else None
        view = instance_view(row, progress, speed, phase, now)
        row_html = str(self.parts.row(view))
        # a running phase grows: redraw its timeline every 2 s, not every pass
        st.spans = timeline_svg_spans(st.timeline, now - now % 2.0)
        tl_html = str(self.parts.timeline(row.id, st.spans)) + str(
            self.parts.legend_frag(row.id, st.spans)
        )
        if new:
            st.row_html, st.tl_html = row_html, tl_html
            frags.append(str(self.parts.row(view, True)))
            frags.append(str(self.parts.panel(row.id, st.text, st.spans, True)))
            return frags
        if row_html != st.row_html:
            st.row_html = row_html
            frags.append(row_html)
        if tl_html != st.tl_html:
            st.tl_html = tl_html
            frags.append(tl_html)
        if reset:
            frags.append(str(self.parts.log_replace(row.id, st.text)))
        elif added:
            frags.append(str(self.parts.log_append(row.id, added)))
        return frags
