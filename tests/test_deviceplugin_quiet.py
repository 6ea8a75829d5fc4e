"""Background work waits for kubelet's calls to pause, but never longer than its bound."""

from __future__ import annotations

import threading
import time

from tensorai.deviceplugin.quiet import CallClock, wait_for_quiet


def test_background_work_starts_once_kubelets_calls_pause() -> None:
    clock = CallClock()
    clock.mark()
    started = time.monotonic()
    wait_for_quiet(clock.idle_s, quiet_s=0.1, max_wait_s=10.0)
    assert clock.idle_s() >= 0.1
    assert time.monotonic() - started < 5.0  # it did not run into the 10 s bound


def test_a_burst_that_never_pauses_holds_background_work_only_up_to_the_bound() -> None:
    clock = CallClock()
    done = threading.Event()

    def burst() -> None:
        while not done.is_set():
            clock.mark()
            time.sleep(0.005)

    caller = threading.Thread(target=burst, daemon=True)
    caller.start()
    try:
        started = time.monotonic()
        wait_for_quiet(clock.idle_s, quiet_s=0.2, max_wait_s=0.3)
        held_s = time.monotonic() - started
        assert clock.idle_s() < 0.2  # kubelet was still calling: the bound released it, not a pause
        assert 0.3 <= held_s < 5.0
    finally:
        done.set()
        caller.join(timeout=2.0)


def test_no_call_yet_or_no_clock_means_no_wait() -> None:
    started = time.monotonic()
    wait_for_quiet(CallClock().idle_s, quiet_s=5.0, max_wait_s=5.0)
    wait_for_quiet(None, quiet_s=5.0, max_wait_s=5.0)
    assert time.monotonic() - started < 2.0


def test_stopping_releases_a_held_wait_at_once() -> None:
    clock = CallClock()
    clock.mark()
    stop = threading.Event()
    stop.set()
    started = time.monotonic()
    wait_for_quiet(clock.idle_s, quiet_s=5.0, max_wait_s=5.0, stop=stop)
    assert time.monotonic() - started < 2.0
