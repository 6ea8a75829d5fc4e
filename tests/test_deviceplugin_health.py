"""GPU health: the XID/probe state machine (table tests on a manual clock) and the monitor thread."""

from __future__ import annotations

import threading
import time

import pytest

from tensorai.deviceplugin.backends import parse_sim_gpus
from tensorai.deviceplugin.gpus import BackendError
from tensorai.deviceplugin.health import (
    DEFAULT_IGNORED_XIDS,
    DEFAULT_STICKY_XIDS,
    HealthMonitor,
    HealthTracker,
    parse_xid_list,
)
from tensorai.deviceplugin.simulated import SimulatedBackend

GPU_A = "GPU-aaaaaaaa-0000-0000-0000-000000000000"
GPU_B = "GPU-bbbbbbbb-0000-0000-0000-000000000000"


class ManualClock:
    """Time that moves only when a test says so."""

    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


def make_tracker(clock: ManualClock, **options: object) -> HealthTracker:
    options.setdefault("recovery_quiet_s", 300.0)
    options.setdefault("recovery_probes", 3)
    return HealthTracker([GPU_A, GPU_B], clock=clock, **options)  # type: ignore[arg-type]


# --- XIDs -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("xid", sorted(DEFAULT_IGNORED_XIDS))
def test_application_xids_never_change_health(xid: int) -> None:
    tracker = make_tracker(ManualClock())
    assert tracker.record_xid(GPU_A, xid) is False
    assert tracker.is_healthy(GPU_A)
    assert tracker.generation == 0


@pytest.mark.parametrize("xid", [8, 32, 48, 61, 62, 63, 79, 92, 94, 119])
def test_critical_xids_make_only_that_gpu_unhealthy(xid: int) -> None:
    tracker = make_tracker(ManualClock())
    assert tracker.record_xid(GPU_A, xid) is True
    assert not tracker.is_healthy(GPU_A)
    assert tracker.healthy_uuids() == {GPU_B}
    state = tracker.states()[GPU_A]
    assert state.last_xid == xid
    assert f"XID {xid}" in state.reason
    assert tracker.generation == 1


def test_ignored_xid_list_is_configurable() -> None:
    tracker = make_tracker(ManualClock(), ignored_xids=parse_xid_list("13, 31,94"))
    assert tracker.record_xid(GPU_A, 94) is False
    assert tracker.is_healthy(GPU_A)
    assert tracker.record_xid(GPU_A, 43) is True  # no longer ignored once the list is replaced
    assert not tracker.is_healthy(GPU_A)


def test_xid_list_parser_rejects_garbage_with_the_item() -> None:
    assert parse_xid_list("") == frozenset()
    with pytest.raises(ValueError, match="'x13'"):
        parse_xid_list("31,x13")


def test_second_xid_on_an_unhealthy_gpu_is_not_a_new_change() -> None:
    tracker = make_tracker(ManualClock())
    tracker.record_xid(GPU_A, 62)
    assert tracker.record_xid(GPU_A, 61) is False
    assert tracker.generation == 1
    assert tracker.states()[GPU_A].last_xid == 61


def test_unknown_gpu_events_are_ignored_not_fatal() -> None:
    tracker = make_tracker(ManualClock())
    assert tracker.record_xid("GPU-unknown", 48) is False
    assert tracker.record_probe("GPU-unknown", False) is False
    assert tracker.admin_recover("GPU-unknown") is False
    assert tracker.is_healthy("GPU-unknown") is False
    assert tracker.healthy_uuids() == {GPU_A, GPU_B}


# --- recovery -------------------------------------------------------------------------------------
def test_recovery_needs_quiet_period_and_consecutive_clean_probes() -> None:
    clock = ManualClock()
    tracker = make_tracker(clock)
    tracker.record_xid(GPU_A, 62)
    # Three clean probes inside the quiet period are not enough.
    for _ in range(3):
        clock.advance(5)
        assert tracker.record_probe(GPU_A, True) is False
    assert not tracker.is_healthy(GPU_A)
    assert "recovering 3 of 3" in tracker.states()[GPU_A].reason
    # Past the quiet period the next clean probe returns it to service.
    clock.advance(300)
    assert tracker.record_probe(GPU_A, True) is True
    assert tracker.is_healthy(GPU_A)
    assert tracker.generation == 2
    assert tracker.states()[GPU_A].since == clock.now_s


def test_quiet_period_alone_is_not_enough_without_n_clean_probes() -> None:
    clock = ManualClock()
    tracker = make_tracker(clock)
    tracker.record_xid(GPU_A, 62)
    clock.advance(10_000)
    assert tracker.record_probe(GPU_A, True) is False
    assert tracker.record_probe(GPU_A, True) is False
    assert tracker.record_probe(GPU_A, True) is True


def test_new_xid_during_recovery_restarts_it() -> None:
    clock = ManualClock()
    tracker = make_tracker(clock)
    tracker.record_xid(GPU_A, 62)
    clock.advance(299)
    tracker.record_probe(GPU_A, True)
    tracker.record_probe(GPU_A, True)
    tracker.record_xid(GPU_A, 62)  # the GPU is still sick
    assert tracker.states()[GPU_A].clean_probes == 0
    clock.advance(2)  # the old quiet period would have ended here
    for _ in range(3):
        assert tracker.record_probe(GPU_A, True) is False
    clock.advance(300)
    assert tracker.record_probe(GPU_A, True) is True


def test_ignored_xid_during_recovery_does_not_restart_it() -> None:
    clock = ManualClock()
    tracker = make_tracker(clock)
    tracker.record_xid(GPU_A, 62)
    clock.advance(301)
    tracker.record_probe(GPU_A, True)
    tracker.record_xid(GPU_A, 13)
    tracker.record_probe(GPU_A, True)
    assert tracker.record_probe(GPU_A, True) is True


def test_failed_probe_during_recovery_resets_the_count_and_the_quiet_period() -> None:
    clock = ManualClock()
    tracker = make_tracker(clock)
    tracker.record_xid(GPU_A, 62)
    clock.advance(400)
    tracker.record_probe(GPU_A, True)
    tracker.record_probe(GPU_A, True)
    assert tracker.record_probe(GPU_A, False) is False  # still unhealthy: no flip
    tracker.record_probe(GPU_A, True)
    tracker.record_probe(GPU_A, True)
    assert tracker.record_probe(GPU_A, True) is False  # quiet period restarted at the failed probe
    clock.advance(300)
    assert tracker.record_probe(GPU_A, True) is True


def test_lost_gpu_stays_unhealthy_while_it_cannot_answer() -> None:
    clock = ManualClock()
    tracker = make_tracker(clock)
    assert tracker.record_lost(GPU_B) is True
    assert tracker.states()[GPU_B].reason == "lost"
    for _ in range(50):
        clock.advance(60)
        tracker.record_lost(GPU_B)  # every probe of a lost GPU says lost again
    assert not tracker.is_healthy(GPU_B)
    # Once it answers again (reset), the normal recovery applies.
    clock.advance(5)
    tracker.record_probe(GPU_B, True)
    tracker.record_probe(GPU_B, True)
    tracker.record_probe(GPU_B, True)
    clock.advance(300)
    assert tracker.record_probe(GPU_B, True) is True


def test_failed_probe_makes_a_healthy_gpu_unhealthy() -> None:
    tracker = make_tracker(ManualClock())
    assert tracker.record_probe(GPU_A, False) is True
    assert tracker.states()[GPU_A].reason == "probe failed"


@pytest.mark.parametrize("xid", sorted(DEFAULT_STICKY_XIDS))
def test_sticky_xids_never_recover_by_probes_only_by_admin(xid: int) -> None:
    clock = ManualClock()
    tracker = make_tracker(clock)
    tracker.record_xid(GPU_A, xid)
    for _ in range(20):
        clock.advance(3600)
        assert tracker.record_probe(GPU_A, True) is False
    assert not tracker.is_healthy(GPU_A)
    assert tracker.states()[GPU_A].sticky
    assert tracker.admin_recover(GPU_A) is True
    assert tracker.is_healthy(GPU_A)
    assert not tracker.states()[GPU_A].sticky


def test_sticky_cause_stays_reported_after_later_non_sticky_events() -> None:
    tracker = make_tracker(ManualClock())
    tracker.record_xid(GPU_A, 48)
    tracker.record_xid(GPU_A, 62)
    tracker.record_probe(GPU_A, False)
    assert tracker.states()[GPU_A].reason.startswith("XID 48")


def test_admin_recover_of_a_healthy_gpu_changes_nothing() -> None:
    tracker = make_tracker(ManualClock())
    assert tracker.admin_recover(GPU_A) is False
    assert tracker.generation == 0


def test_recovery_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="recovery_probes"):
        HealthTracker([GPU_A], recovery_probes=0)
    with pytest.raises(ValueError, match="recovery_quiet_s"):
        HealthTracker([GPU_A], recovery_quiet_s=-1)


# --- waiting for changes ----------------------------------------------------------------------------
def test_wait_for_change_wakes_on_a_flip_from_another_thread() -> None:
    tracker = make_tracker(ManualClock())
    timer = threading.Timer(0.05, tracker.record_xid, args=(GPU_A, 48))
    timer.start()
    started = time.monotonic()
    assert tracker.wait_for_change(0, timeout_s=5.0) == 1
    assert time.monotonic() - started < 1.0
    timer.join(timeout=5.0)


def test_wait_for_change_times_out_with_the_same_generation() -> None:
    tracker = make_tracker(ManualClock())
    started = time.monotonic()
    assert tracker.wait_for_change(0, timeout_s=0.1) == 0
    assert time.monotonic() - started >= 0.09


def test_wait_for_change_returns_at_once_when_already_behind() -> None:
    tracker = make_tracker(ManualClock())
    tracker.record_xid(GPU_A, 48)
    assert tracker.wait_for_change(0, timeout_s=10.0) == 1


# --- the monitor thread with the simulated backend ---------------------------------------------------
@pytest.fixture
def sim_monitor():
    backend = SimulatedBackend(parse_sim_gpus("2xH100:81559"), node_name="health-test")
    uuids = [gpu.uuid for gpu in backend.gpus()]
    tracker = HealthTracker(uuids, recovery_quiet_s=0.2, recovery_probes=2)
    monitor = HealthMonitor(backend, tracker, probe_interval_s=0.05)
    monitor.start()
    yield backend, tracker, monitor, uuids
    monitor.stop(timeout_s=2.0)
    backend.close()


def wait_until(predicate, timeout_s: float) -> float:
    """Seconds until predicate() held; fails the test after timeout_s."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout_s:
            pytest.fail(f"condition not met within {timeout_s} s")
        time.sleep(0.005)
    return time.monotonic() - started


def test_injected_xid_makes_the_gpu_unhealthy_within_one_second(sim_monitor) -> None:
    backend, tracker, _, uuids = sim_monitor
    generation = tracker.generation
    started = time.monotonic()
    backend.inject_xid(uuids[0], 48)
    assert tracker.wait_for_change(generation, timeout_s=1.0) == generation + 1
    assert time.monotonic() - started < 1.0
    assert tracker.healthy_uuids() == {uuids[1]}


def test_monitor_ignores_application_xids(sim_monitor) -> None:
    backend, tracker, _, uuids = sim_monitor
    backend.inject_xid(uuids[0], 31)
    backend.inject_xid(uuids[1], 62)
    wait_until(lambda: not tracker.is_healthy(uuids[1]), 2.0)
    assert tracker.is_healthy(uuids[0])


def test_monitor_detects_a_lost_gpu_and_recovers_it_after_restore(sim_monitor) -> None:
    backend, tracker, _, uuids = sim_monitor
    backend.lose_gpu(uuids[1])
    wait_until(lambda: not tracker.is_healthy(uuids[1]), 2.0)
    wait_until(lambda: tracker.states()[uuids[1]].reason.startswith("XID 79"), 2.0)
    time.sleep(0.4)  # longer than the quiet period: a lost GPU must still not come back
    assert not tracker.is_healthy(uuids[1])
    # XID 79 (fallen off the bus) is sticky: restoring the GPU is not enough ...
    backend.restore_gpu(uuids[1])
    time.sleep(0.4)
    assert not tracker.is_healthy(uuids[1])
    # ... until an administrator returns it to service.
    assert tracker.admin_recover(uuids[1])
    assert tracker.is_healthy(uuids[1])


def test_monitor_recovers_a_non_sticky_xid_after_quiet_clean_probes(sim_monitor) -> None:
    backend, tracker, _, uuids = sim_monitor
    backend.inject_xid(uuids[0], 62)
    wait_until(lambda: not tracker.is_healthy(uuids[0]), 2.0)
    recovered_after_s = wait_until(lambda: tracker.is_healthy(uuids[0]), 5.0)
    assert recovered_after_s >= 0.15  # not before the 0.2 s quiet period (minus detection lag)


def test_event_wait_failure_marks_every_gpu_unhealthy_without_killing_the_monitor(sim_monitor) -> None:
    backend, tracker, monitor, uuids = sim_monitor
    backend.fail_next("wait_for_events", BackendError("nvmlEventSetWait failed: Unknown Error"))
    wait_until(lambda: tracker.healthy_uuids() == set(), 2.0)
    assert "event wait failed" in tracker.states()[uuids[0]].reason
    assert monitor.running
    # Events work again: the GPUs come back through the normal recovery path.
    wait_until(lambda: tracker.healthy_uuids() == set(uuids), 5.0)
    backend.inject_xid(uuids[0], 48)
    wait_until(lambda: not tracker.is_healthy(uuids[0]), 2.0)


def test_probe_errors_count_as_failed_probes(sim_monitor) -> None:
    backend, tracker, monitor, _ = sim_monitor
    backend.fail_next("probe", BackendError("nvmlDeviceGetMemoryInfo failed"))
    wait_until(lambda: len(tracker.healthy_uuids()) < 2, 2.0)
    assert monitor.running


def test_monitor_stops_promptly() -> None:
    backend = SimulatedBackend(parse_sim_gpus("1xH100:81559"))
    tracker = HealthTracker([gpu.uuid for gpu in backend.gpus()])
    monitor = HealthMonitor(backend, tracker, probe_interval_s=5.0)
    monitor.start()
    time.sleep(0.05)
    started = time.monotonic()
    monitor.stop(timeout_s=2.0)
    assert not monitor.running
    assert time.monotonic() - started < 1.5
