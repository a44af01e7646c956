"""Per-token limits (TRACKER_AUTH=on): a request rate and a number of requests in progress.

Each API process keeps its own counts (README: "Limits"): with P processes behind a balancer a
token may get up to P times the rate. That is the usual trade of an in-process limiter (no
shared store on the path of every request); a fleet-wide limit belongs to the gateway in front.

- Rate: a token bucket per token: TRACKER_RATE_LIMIT requests per second on average, bursts of
  up to TRACKER_RATE_BURST. Over it: 429 with Retry-After, the whole seconds until a request
  would be admitted.
- Concurrency: at most TRACKER_MAX_CONCURRENT requests of one token in progress at once; one
  more is refused at once (429, Retry-After: 1) rather than queued, so a client that opens
  connections without bound cannot hold the server's workers.

Keys are token ids and OIDC subjects: bounded by the tokens issued and the identities the
issuer vouches for (an unknown or invalid token is refused before this).
"""

from __future__ import annotations

import math
import time
from collections.abc import Hashable


class TokenLimits:
    def __init__(self, rate: float, burst: float, concurrency: int) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self.concurrency = concurrency
        self._buckets: dict[Hashable, tuple[float, float]] = {}  # token id -> (tokens left, at)
        self._in_progress: dict[Hashable, int] = {}

    def take(self, key: Hashable) -> float | None:
        """Admit one request of ``key``: None, or the seconds to wait (the rate is exceeded)."""
        if self.rate <= 0:
            return None
        now = time.monotonic()
        left, at = self._buckets.get(key, (self.burst, now))
        left = min(self.burst, left + (now - at) * self.rate)
        if left < 1.0:
            self._buckets[key] = (left, now)
            return (1.0 - left) / self.rate
        self._buckets[key] = (left - 1.0, now)
        return None

    def enter(self, key: Hashable) -> bool:
        """One more request of ``key`` in progress, unless that is over the cap."""
        if self.concurrency <= 0:
            return True
        count = self._in_progress.get(key, 0)
        if count >= self.concurrency:
            return False
        self._in_progress[key] = count + 1
        return True

    def leave(self, key: Hashable) -> None:
        if self.concurrency <= 0:
            return
        count = self._in_progress.get(key, 0) - 1
        if count > 0:
            self._in_progress[key] = count
        else:
            self._in_progress.pop(key, None)


def retry_after(seconds: float) -> str:
    """Retry-After as HTTP wants it: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
