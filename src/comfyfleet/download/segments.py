"""Byte-range bookkeeping for one file: what is done, what is claimed, what is left.

Pure data, no I/O, so a model-based test can drive it with random completions and failures.
A *claim* is one connection's current job: bytes ``[pos, end)`` still to write, starting at
``start``. Work stealing (as aria2's ``-k``): when nothing is unclaimed, a free connection
takes the upper half of the largest claim still in flight; the victim's ``end`` shrinks and
its connection stops writing there. Invariant: done ranges, the in-flight remainders of the
claims and the unclaimed gaps partition ``[0, size)`` — no byte is lost or written twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Range = tuple[int, int]  # [start, end)


@dataclass(eq=False)
class Claim:
    """One connection's share of a file: it writes ``[pos, end)`` in order."""

    start: int
    end: int
    pos: int = -1
    #: set when the claim was given back (failure) or finished; a stale claim writes nothing
    closed: bool = False
    #: bytes at ``pos`` being written right now (reserved: a thief may not take them)
    writing: int = 0

    def __post_init__(self) -> None:
        if self.pos < 0:
            self.pos = self.start

    @property
    def remaining(self) -> int:
        return max(0, self.end - self.pos)


def merge(ranges: list[Range]) -> list[Range]:
    """Sorted, non-overlapping, non-adjacent ranges covering the same bytes."""
    out: list[Range] = []
    for s, e in sorted(r for r in ranges if r[1] > r[0]):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


@dataclass
class Segments:
    """Done/claimed/unclaimed byte ranges of a file of ``size`` bytes."""

    size: int
    #: the largest range one claim takes from an unclaimed gap (one ranged GET)
    segment_size: int = 32 * 1024 * 1024
    #: never steal unless the victim has at least twice this left
    min_split: int = 1024 * 1024
    done: list[Range] = field(default_factory=list)
    claims: list[Claim] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.done = merge([(max(0, s), min(self.size, e)) for s, e in self.done])

    # --- queries -----------------------------------------------------------------------

    @property
    def done_bytes(self) -> int:
        return sum(e - s for s, e in self.done)

    @property
    def complete(self) -> bool:
        return self.done == [(0, self.size)] or self.size == 0

    def contiguous_prefix(self) -> int:
        """How many bytes from offset 0 are done (the part a streaming hash may consume)."""
        return self.done[0][1] if self.done and self.done[0][0] == 0 else 0

    def unclaimed(self) -> list[Range]:
        """Gaps that are neither done nor claimed by a live connection."""
        taken = merge(self.done + [(c.pos, c.end) for c in self.claims])
        gaps: list[Range] = []
        cursor = 0
        for s, e in taken:
            if s > cursor:
                gaps.append((cursor, s))
            cursor = max(cursor, e)
        if cursor < self.size:
            gaps.append((cursor, self.size))
        return gaps

    # --- changes -----------------------------------------------------------------------

    def claim(self) -> Claim | None:
        """A new claim: the first unclaimed gap (capped), else half of the largest claim."""
        gaps = self.unclaimed()
        if gaps:
            s, e = gaps[0]
            c = Claim(s, min(e, s + max(1, self.segment_size)))
            self.claims.append(c)
            return c
        return self.steal()

    def steal(self) -> Claim | None:
        """Split the largest in-flight claim; the new claim takes its upper half."""

        def stealable(c: Claim) -> int:
            return c.remaining - c.writing

        live = [c for c in self.claims if stealable(c) >= 2 * max(1, self.min_split)]
        if not live:
            return None
        victim = max(live, key=stealable)
        mid = victim.pos + victim.writing + stealable(victim) // 2
        c = Claim(mid, victim.end)
        victim.end = mid
        self.claims.append(c)
        return c

    def advance(self, claim: Claim, n: int) -> int:
        """Record that ``n`` bytes were written at ``claim.pos``; return how many counted.

        Bytes past the claim's (possibly shrunk) ``end`` do not count: the caller must not
        have written them, so it calls :meth:`allowed` first.
        """
        claim.writing = 0
        if claim.closed or n <= 0:
            return 0
        n = min(n, claim.remaining)
        if n:
            self.done = merge([*self.done, (claim.pos, claim.pos + n)])
            claim.pos += n
        if claim.remaining == 0:
            self.finish(claim)
        return n

    def reserve(self, claim: Claim, n: int) -> int:
        """Reserve up to ``n`` bytes at ``claim.pos`` for writing; return how many it may write.

        Until :meth:`advance`, a thief splits only above the reserved bytes.
        """
        n = 0 if claim.closed else min(n, claim.remaining)
        claim.writing = n
        return n

    def finish(self, claim: Claim) -> None:
        """The claim's connection is done with it; whatever it did not write is unclaimed."""
        claim.closed = True
        if claim in self.claims:
            self.claims.remove(claim)

    release = finish  # a failed connection gives its remainder back the same way

    def reset(self) -> None:
        """Forget all progress (the object changed, or the server cannot do ranges)."""
        for c in self.claims:
            c.closed = True
        self.claims.clear()
        self.done = []
