"""The launch throttle keeps busy time near the share (driven by a manual clock: no timing flakiness)."""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tensorai.kernels.throttle import LaunchThrottle


class ManualClock:
    """Time that moves only when the code under test works (advance) or sleeps."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def run_busy(throttle: LaunchThrottle, clock: ManualClock, durations: list[float]) -> float:
    start = clock.now
    for busy in durations:
        clock.now += busy
        throttle.charge(busy)
    return sum(durations) / (clock.now - start)


@given(
    share=st.floats(0.05, 0.95),
    durations=st.lists(st.floats(0.001, 0.2), min_size=50, max_size=200),
)
@settings(max_examples=60, deadline=None)
def test_long_run_busy_fraction_converges_to_the_share(share, durations) -> None:
    clock = ManualClock()
    throttle = LaunchThrottle(share, burst_seconds=0.05, clock=clock, sleep=clock.sleep)
    fraction = run_busy(throttle, clock, durations)
    total_busy = sum(durations)
    # The only slack is the initial burst, which lets at most burst seconds run unpaid.
    assert fraction <= share * (total_busy / max(total_busy - 0.05, 1e-9)) + 1e-9
    assert fraction >= share * 0.999


def test_full_share_never_sleeps() -> None:
    clock = ManualClock()
    throttle = LaunchThrottle(1.0, clock=clock, sleep=clock.sleep)
    assert run_busy(throttle, clock, [0.1] * 20) == pytest.approx(1.0)
    assert throttle.throttled_seconds == 0


def test_work_within_the_burst_runs_without_waiting() -> None:
    clock = ManualClock()
    throttle = LaunchThrottle(0.25, burst_seconds=0.1, clock=clock, sleep=clock.sleep)
    clock.now += 0.05
    assert throttle.charge(0.05) == 0
    assert throttle.throttled_seconds == 0


def test_quarter_share_waits_three_times_the_busy_time() -> None:
    clock = ManualClock()
    throttle = LaunchThrottle(0.25, burst_seconds=0.0, clock=clock, sleep=clock.sleep)
    clock.now += 1.0
    slept = throttle.charge(1.0)
    # 1 s busy earned 0.25 s; the 0.75 s debt refills at 0.25/s.
    assert slept == pytest.approx(3.0)


@pytest.mark.parametrize("share", [0.0, -0.5, 1.5])
def test_share_outside_zero_to_one_is_refused(share) -> None:
    with pytest.raises(ValueError, match=r"share must be in \(0, 1\]"):
        LaunchThrottle(share)


def test_stop_event_cuts_a_throttle_sleep_short() -> None:
    throttle = LaunchThrottle(0.01, burst_seconds=0.0)
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    throttle.charge(1.0, stop)  # would otherwise sleep ~99 s
    assert time.monotonic() - started < 30
