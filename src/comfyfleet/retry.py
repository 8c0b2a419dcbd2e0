"""The one retry policy of probes and downloads: how often, how long between, how long to wait.

Every HTTP exchange is retried at exactly one layer: a probe inside
:func:`comfyfleet.sources.http.send`, a data transfer by the download engine (which also counts
progress). Both ask a :class:`RetryPolicy` whether to go on and how long to wait, so nothing
is retried twice over (a 503 host gets ``retries + 1`` requests, not a product of layers).
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

#: default seconds to wait for a TCP (and TLS) connection
CONNECT_TIMEOUT = 10.0
#: default seconds to wait, once connected, for the first byte of the reply (its headers)
FIRST_BYTE_TIMEOUT = 30.0


class _Timeouts(Protocol):
    retries: int
    connect_timeout: float
    first_byte_timeout: float


def backoff(attempt: int, *, base: float = 0.5, cap: float = 30.0) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base·2^attempt)]."""
    return random.uniform(0, min(cap, base * 2 ** max(0, attempt)))


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or an HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


#: called before each wait: ``(error, failed attempt number from 1, seconds to wait)``
OnRetry = Callable[[BaseException, int, float], None]


@dataclass(frozen=True)
class RetryPolicy:
    """How one request is retried: ``retries`` more attempts after the first, with backoff."""

    retries: int = 2
    #: backoff ceiling of the first retry (doubled each attempt, full jitter)
    base: float = 0.5
    cap: float = 30.0
    #: longest ``Retry-After`` honoured
    max_retry_after: float = 300.0
    connect_timeout: float = CONNECT_TIMEOUT
    first_byte_timeout: float = FIRST_BYTE_TIMEOUT
    on_retry: OnRetry | None = None

    @property
    def attempts(self) -> int:
        """Requests made at most: the first plus ``retries``."""
        return self.retries + 1

    def gives_up(self, failures: int) -> bool:
        """Whether ``failures`` consecutive failed attempts spend the budget."""
        return failures > self.retries

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        """Seconds to wait after the ``failures``-th consecutive failure (1-based)."""
        if retry_after is not None:
            return min(float(retry_after), self.max_retry_after)
        return backoff(failures - 1, base=self.base, cap=self.cap)

    def with_on_retry(self, on_retry: OnRetry | None) -> RetryPolicy:
        """This policy, reporting each retry to ``on_retry``."""
        return replace(self, on_retry=on_retry)

    @classmethod
    def for_download(cls, settings: _Timeouts) -> RetryPolicy:
        """A download's policy: the manifest's ``[download]`` retries and timeouts."""
        return cls(
            retries=settings.retries,
            connect_timeout=settings.connect_timeout,
            first_byte_timeout=settings.first_byte_timeout,
        )

    @classmethod
    def for_check(cls, settings: _Timeouts | None = None) -> RetryPolicy:
        """``check``'s policy: 3 attempts, short waits (a preflight must stay fast), the
        manifest's timeouts."""
        return cls(
            retries=2,
            base=0.25,
            cap=10.0,
            max_retry_after=10.0,
            connect_timeout=settings.connect_timeout if settings else CONNECT_TIMEOUT,
            first_byte_timeout=settings.first_byte_timeout if settings else FIRST_BYTE_TIMEOUT,
        )
