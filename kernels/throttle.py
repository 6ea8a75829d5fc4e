"""Launch throttle: a token bucket on measured kernel time that keeps GPU time near the share.

Tokens are seconds of GPU time; they accrue at `share` per wall-clock second up to `burst_seconds`.
Each finished operation spends its measured busy time; when the bucket goes negative the worker
sleeps until it is back at zero. Over any long window busy / wall therefore tends to `share`
(busy d spends d but earns d*share, and the debt d*(1-share) takes d*(1-share)/share to repay).
This is cooperative: it limits this worker, not others on the GPU (MPS or time-slicing do that).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class LaunchThrottle:
    """Token bucket over busy seconds; `share` in (0, 1]; a share of 1 never sleeps."""

    def __init__(
        self,
        share: float,
        burst_seconds: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        if not 0 < share <= 1:
            raise ValueError(f"throttle share must be in (0, 1], got {share}")
        if burst_seconds < 0:
            raise ValueError(f"burst must be >= 0 seconds, got {burst_seconds}")
        self.share = share
        self.burst_seconds = burst_seconds
        self._clock = clock
        self._sleep = sleep
        self._tokens = burst_seconds
        self._last = clock()
        self._lock = threading.Lock()
        self.busy_seconds = 0.0
        self.throttled_seconds = 0.0

    def _refill(self, busy_seconds: float = 0.0) -> None:
        # Idle time earns tokens only up to the burst; the busy interval that just ended earns
        # its full share (else a full bucket would lose what the work itself earned).
        now = self._clock()
        busy_started = max(self._last, now - busy_seconds)
        self._tokens = min(self.burst_seconds, self._tokens + (busy_started - self._last) * self.share)
        self._tokens += (now - busy_started) * self.share
        self._last = now

    def charge(self, busy_seconds: float, stop: threading.Event | None = None) -> float:
        """Spend `busy_seconds` of GPU time; sleep off any debt. Returns the seconds slept.

        `stop` (optional) cuts the sleep short so a worker told to exit does not linger.
        """
        if busy_seconds < 0:
            raise ValueError(f"busy time must be >= 0, got {busy_seconds}")
        with self._lock:
            self.busy_seconds += busy_seconds
            if self.share >= 1:
                return 0.0
            self._refill(busy_seconds)
            self._tokens -= busy_seconds
            debt = -self._tokens
        if debt <= 0:
            return 0.0
        wait = debt / self.share
        started = self._clock()
        if stop is not None:
            stop.wait(wait)
        else:
            self._sleep(wait)
        with self._lock:
            slept = max(0.0, self._clock() - started) if stop is not None else wait
            self.throttled_seconds += slept
            self._refill()
        return slept
