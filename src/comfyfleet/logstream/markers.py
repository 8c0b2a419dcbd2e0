"""Completion markers: which lines end a follow, and how (DESIGN.md, provision.log)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Protocol

DEFAULT_DONE = ("PROVISIONING COMPLETE", "ComfyUI setup complete")
DEFAULT_FAIL = ("PROVISIONING FAILED", "FATAL:", "CRITICAL ERROR:")

# Leading whitespace, an optional [timestamp], an optional symbol such as ✅. The symbol must
# be non-ASCII: subprocess output is indented with "  | " precisely so that it cannot match.
_PREFIX = re.compile(r"^\s*(?:\[[^\]\n]*\]\s*)?(?:[^\x00-\x7f\w\s]+\s*)?")

Outcome = Literal["complete", "failed"]


class LineClassifier(Protocol):
    """What the follower asks of its markers."""

    def first_match(self, lines: tuple[bytes, ...]) -> tuple[Outcome, str] | None:
        """The first line among ``lines`` that ends the follow, with its outcome."""
        ...


@dataclass(frozen=True)
class MarkerSet:
    """Done and fail markers; a line matching a fail marker wins over a done marker."""

    done: tuple[str, ...] = DEFAULT_DONE
    fail: tuple[str, ...] = DEFAULT_FAIL

    @classmethod
    def build(
        cls, done: list[str] | None, fail: list[str] | None, *, defaults: bool = True
    ) -> MarkerSet:
        """Custom markers added to the defaults (or replacing them when ``defaults`` is off)."""
        base_done = DEFAULT_DONE if defaults else ()
        base_fail = DEFAULT_FAIL if defaults else ()
        return cls(
            tuple(dict.fromkeys([*base_done, *(done or [])])),
            tuple(dict.fromkeys([*base_fail, *(fail or [])])),
        )

    def classify(self, line: str) -> Outcome | None:
        """``failed``/``complete`` when ``line`` carries a marker, else None."""
        rest = line[_PREFIX.match(line).end() :]  # type: ignore[union-attr]
        if any(rest.startswith(m) for m in self.fail):
            return "failed"
        if any(rest.startswith(m) for m in self.done):
            return "complete"
        return None

    def first_match(self, lines: tuple[bytes, ...]) -> tuple[Outcome, str] | None:
        """The first marker line among ``lines`` and its outcome (fast path: no marker text)."""
        blob = b"\n".join(lines)
        needles = [m.encode() for m in (*self.fail, *self.done)]
        if not any(n in blob for n in needles):
            return None
        for raw in lines:
            text = raw.decode("utf-8", "replace")
            outcome = self.classify(text)
            if outcome is not None:
                return outcome, text
        return None
