"""Model-based test of the segment scheduler: no byte range is ever lost or counted twice."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from comfyfleet.download.segments import Segments, merge


class SegmentMachine(RuleBasedStateMachine):
    """Random claims, partial writes, steals, failures; the model is a set of written bytes."""

    @initialize(
        size=st.integers(1, 5000),
        segment=st.integers(1, 1500),
        min_split=st.integers(1, 300),
        resumed=st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 800)), max_size=3),
    )
    def setup(self, size, segment, min_split, resumed):
        done = [(s, min(size, s + n)) for s, n in resumed if s < size]
        self.seg = Segments(size, segment_size=segment, min_split=min_split, done=done)
        self.written: set[int] = set()
        for s, e in merge(done):
            self.written.update(range(s, e))
        self.live = []

    @rule()
    def claim(self):
        c = self.seg.claim()
        if c is not None:
            assert c.remaining > 0
            self.live.append(c)

    @precondition(lambda self: self.live)
    @rule(i=st.integers(0, 100), n=st.integers(1, 700))
    def write(self, i, n):
        c = self.live[i % len(self.live)]
        allowed = self.seg.reserve(c, n)
        new = set(range(c.pos, c.pos + allowed))
        assert not (new & self.written), "a byte would be written twice"
        counted = self.seg.advance(c, allowed)
        assert counted == allowed
        self.written |= new
        if c.closed:
            self.live.remove(c)

    @precondition(lambda self: self.live)
    @rule(i=st.integers(0, 100))
    def fail(self, i):
        c = self.live.pop(i % len(self.live))
        self.seg.release(c)
        assert self.seg.advance(c, 10) == 0, "a released claim must not count bytes"

    @rule()
    def steal(self):
        c = self.seg.steal()
        if c is not None:
            self.live.append(c)

    @invariant()
    def partition(self):
        seg = self.seg
        assert seg.done_bytes == len(self.written)
        assert {b for s, e in seg.done for b in range(s, e)} == self.written
        pieces = list(seg.done) + [(c.pos, c.end) for c in seg.claims if c.end > c.pos]
        pieces += seg.unclaimed()
        covered = sorted(pieces)
        pos = 0
        for s, e in covered:  # disjoint and gap-free over [0, size)
            assert s == pos, f"gap or overlap at {pos}: {covered}"
            pos = e
        assert pos == seg.size

    @invariant()
    def prefix(self):
        p = self.seg.contiguous_prefix()
        assert all(b in self.written for b in range(p))
        assert p == self.seg.size or p not in self.written


TestSegmentMachine = SegmentMachine.TestCase
TestSegmentMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


@given(size=st.integers(1, 10_000), conns=st.integers(1, 8), step=st.integers(1, 3000))
@settings(max_examples=100, deadline=None)
def test_connections_finish_the_file_with_every_byte_once(size, conns, step):
    seg = Segments(size, segment_size=4096, min_split=64)
    claims = [c for c in (seg.claim() for _ in range(conns)) if c]
    total = 0
    while not seg.complete:
        claims = [c for c in claims if not c.closed]
        if len(claims) < conns:
            c = seg.claim()
            if c:
                claims.append(c)
        for c in list(claims):
            total += seg.advance(c, seg.reserve(c, step))
    assert total == size and seg.done == [(0, size)]


def test_steal_splits_the_largest_claim_in_half():
    seg = Segments(100, segment_size=100, min_split=10)
    a = seg.claim()
    b = seg.claim()
    assert (a.start, a.end, b.start, b.end) == (0, 50, 50, 100)
    seg.advance(a, 10)
    c = seg.claim()  # a has 40 left, b 50: b is split
    assert (c.start, c.end, b.end) == (75, 100, 75)


def test_reserved_bytes_are_not_stolen():
    seg = Segments(100, segment_size=100, min_split=10)
    a = seg.claim()
    seg.reserve(a, 60)
    c = seg.steal()
    assert c.start >= 60
