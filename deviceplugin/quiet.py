"""Hold background work (annotation writes, reconciliation) until kubelet's calls pause.

Why: the plugin is one Python process. Work a background thread does while kubelet waits on
GetPreferredAllocation/Allocate competes with that call for the GIL and, on small nodes, for the CPU;
an admission burst makes the reconciler and the annotation writer run between every pair of calls. A
short quiet period moves that work into the gaps between admissions, and `max_wait_s` bounds how
long it can be held back under a burst that never pauses (annotations stay timely).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

QUIET_S = 0.05  # a pause in kubelet's calls this long is a gap to do background work in
MAX_HOLD_S = 1.0  # ... and background work is never held back longer than this under a burst


class CallClock:
    """When kubelet last called the plugin (monotonic seconds); written on the call path, so one store."""

    def __init__(self) -> None:
        self.last_call_at = float("-inf")

    def mark(self) -> None:
        self.last_call_at = time.monotonic()

    def idle_s(self) -> float:
        """Seconds since kubelet's last call (inf before the first)."""
        return time.monotonic() - self.last_call_at

    def wait_for_pause(self, stop: threading.Event | None = None) -> None:
        """What the annotation writer and the reconciler do before their work: wait for a `QUIET_S`
        pause in kubelet's calls, `MAX_HOLD_S` at most, or until `stop` is set."""
        wait_for_quiet(self.idle_s, quiet_s=QUIET_S, max_wait_s=MAX_HOLD_S, stop=stop)


def wait_for_quiet(
    idle_s: Callable[[], float] | None,
    *,
    quiet_s: float,
    max_wait_s: float,
    stop: threading.Event | None = None,
) -> None:
    """Return once `idle_s()` >= `quiet_s`, after `max_wait_s` at the latest, or at once when `stop` is set."""
    if idle_s is None or quiet_s <= 0:
        return
    deadline = time.monotonic() + max_wait_s
    while True:
        quiet_left_s = quiet_s - idle_s()
        deadline_left_s = deadline - time.monotonic()
        if quiet_left_s <= 0 or deadline_left_s <= 0:
            return
        pause_s = min(quiet_left_s, deadline_left_s)
        if stop is not None:
            if stop.wait(pause_s):
                return
        else:
            time.sleep(pause_s)
