"""GPU health: an XID/probe state machine and the thread that feeds it from a backend.

States per GPU and how they change (the tracker is pure: no I/O, an injectable clock):

    Healthy --critical XID / lost / failed probe / event-wait failure--> Unhealthy
    Unhealthy --new critical XID, lost, failed probe--> Unhealthy (recovery starts over)
    Unhealthy --`recovery_probes` consecutive clean probes, and no critical event for
                `recovery_quiet_s`--> Healthy                         (automatic recovery)
    Unhealthy, sticky (XID in `sticky_xids`) --only admin_recover--> Healthy
    any --admin_recover--> Healthy                                    (node annotation, by a human)

Why a broken GPU cannot flip back on its own: a GPU that keeps raising XIDs never gets a quiet
period; one that cannot answer a query (lost, off the bus, driver wedged) never collects a clean
probe, and a single failed probe restarts the count; and XIDs that mean the hardware needs a reset
or replacement (double-bit ECC, uncontained ECC, row-remap failure, NVLink, fallen off the bus,
GSP errors) are sticky: only an administrator, after acting on the GPU, returns it to service.
Application XIDs (13, 31, 43, 45, 68, 109 - what NVIDIA's plugin skips) never change health.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from tensorai.deviceplugin.gpus import BackendError, GPUBackend, GPULostError

log = logging.getLogger(__name__)

# Application errors (a user's kernel faulted), not a sick GPU: the same list as NVIDIA's plugin.
DEFAULT_IGNORED_XIDS = frozenset({13, 31, 43, 45, 68, 109})
# XIDs after which the GPU needs a reset or replacement: 48 double-bit ECC, 64 row-remapper
# failure, 74 NVLink error, 79 fallen off the bus, 95 uncontained ECC, 119/120 GSP RPC timeout/error.
DEFAULT_STICKY_XIDS = frozenset({48, 64, 74, 79, 95, 119, 120})

REASON_LOST = "lost"
REASON_PROBE_FAILED = "probe failed"


@dataclass(frozen=True, slots=True)
class GPUHealth:
    """What the tracker knows about one GPU, as a snapshot."""

    healthy: bool
    reason: str  # "" when healthy and never sick; e.g. "XID 48 (sticky: needs admin recover)", "recovering 1 of 3"
    since: float  # clock time of the last Healthy <-> Unhealthy flip (or of tracking start)
    last_xid: int | None = None  # the last critical XID seen, if any
    clean_probes: int = 0  # consecutive clean probes since the last critical event
    sticky: bool = False  # only admin_recover can return it to service


@dataclass(slots=True)
class _GPUState:
    healthy: bool = True
    reason: str = ""
    since: float = 0.0
    last_xid: int | None = None
    last_critical_at: float | None = None
    clean_probes: int = 0
    sticky: bool = False
    cause: str = ""  # what made it unhealthy; `reason` adds recovery progress to it


def parse_xid_list(text: str) -> frozenset[int]:
    """Parse a comma list of XIDs ("13,31,43"); ValueError naming the bad item."""
    xids: set[int] = set()
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if not item.isdigit() or len(item) > 6:
            raise ValueError(f"XID list item {item!r} is not a non-negative integer")
        xids.add(int(item))
    return frozenset(xids)


class HealthTracker:
    """Healthy/Unhealthy per GPU from XIDs, probes and admin actions; thread-safe.

    `generation` increments on every Healthy <-> Unhealthy flip, so ListAndWatch and the inventory
    publisher can block in `wait_for_change` and react at once, without polling.
    """

    def __init__(
        self,
        gpu_uuids: list[str],
        *,
        ignored_xids: Iterable[int] = DEFAULT_IGNORED_XIDS,
        recovery_quiet_s: float = 300.0,
        recovery_probes: int = 3,
        clock: Callable[[], float] = time.monotonic,
        sticky_xids: Iterable[int] = DEFAULT_STICKY_XIDS,
    ) -> None:
        if recovery_probes < 1:
            raise ValueError(f"recovery_probes must be at least 1, got {recovery_probes}")
        if recovery_quiet_s < 0:
            raise ValueError(f"recovery_quiet_s must be >= 0, got {recovery_quiet_s}")
        self.ignored_xids = frozenset(ignored_xids)
        self.sticky_xids = frozenset(sticky_xids)
        self.recovery_quiet_s = float(recovery_quiet_s)
        self.recovery_probes = int(recovery_probes)
        self._clock = clock
        self._changed = threading.Condition()
        now = clock()
        self._states = {uuid: _GPUState(since=now) for uuid in gpu_uuids}
        self.generation = 0

    # --- events -------------------------------------------------------------------------------------
    def record_xid(self, gpu_uuid: str, xid: int) -> bool:
        """An XID on a GPU; ignored XIDs change nothing. True if the GPU's health changed."""
        if xid in self.ignored_xids:
            log.info("GPU %s: XID %d is an application error, health unchanged", gpu_uuid, xid)
            return False
        sticky = xid in self.sticky_xids
        cause = f"XID {xid} (sticky: needs admin recover)" if sticky else f"XID {xid}"
        return self._mark_unhealthy(gpu_uuid, cause, xid=xid, sticky=sticky)

    def record_lost(self, gpu_uuid: str) -> bool:
        """The GPU no longer answers (NVML GpuIsLost). True if health changed."""
        return self._mark_unhealthy(gpu_uuid, REASON_LOST)

    def record_failure(self, gpu_uuid: str, reason: str) -> bool:
        """Any other sign of a sick GPU (event wait failed, registration failed). True if health changed."""
        return self._mark_unhealthy(gpu_uuid, reason)

    def record_probe(self, gpu_uuid: str, ok: bool) -> bool:
        """A cheap query answered (ok) or not. True if health changed.

        A failed probe makes a healthy GPU unhealthy and restarts any recovery. A clean probe of an
        unhealthy, non-sticky GPU counts towards recovery; the GPU turns healthy on the
        `recovery_probes`-th consecutive clean probe taken at least `recovery_quiet_s` after the
        last critical event.
        """
        with self._changed:
            state = self._states.get(gpu_uuid)
            if state is None:
                log.warning("probe result for unknown GPU %s ignored", gpu_uuid)
                return False
            if not ok:
                return self._mark_unhealthy_locked(gpu_uuid, state, REASON_PROBE_FAILED)
            if state.healthy or state.sticky:
                return False
            state.clean_probes += 1
            now = self._clock()
            quiet_s = now - (state.last_critical_at if state.last_critical_at is not None else now)
            if state.clean_probes >= self.recovery_probes and quiet_s >= self.recovery_quiet_s:
                log.warning(
                    "GPU %s back in service after %d clean probes and %.0f s without errors (was: %s)",
                    gpu_uuid,
                    state.clean_probes,
                    quiet_s,
                    state.cause,
                )
                self._set_healthy_locked(state, now, f"recovered from {state.cause}")
                return True
            probes = min(state.clean_probes, self.recovery_probes)
            state.reason = (
                f"{state.cause}; recovering {probes} of {self.recovery_probes} clean probes, "
                f"quiet {min(quiet_s, self.recovery_quiet_s):.0f} of {self.recovery_quiet_s:.0f} s"
            )
            return False

    def admin_recover(self, gpu_uuid: str) -> bool:
        """An administrator returns the GPU to service (also sticky ones). True if health changed."""
        with self._changed:
            state = self._states.get(gpu_uuid)
            if state is None:
                log.warning("admin recover of unknown GPU %s ignored", gpu_uuid)
                return False
            if state.healthy:
                return False
            log.warning("GPU %s returned to service by an administrator (was: %s)", gpu_uuid, state.cause)
            self._set_healthy_locked(state, self._clock(), f"admin recovered from {state.cause}")
            return True

    # --- queries ------------------------------------------------------------------------------------
    def is_healthy(self, gpu_uuid: str) -> bool:
        """False for unhealthy and for unknown GPUs."""
        with self._changed:
            state = self._states.get(gpu_uuid)
            return state is not None and state.healthy

    def healthy_uuids(self) -> set[str]:
        with self._changed:
            return {uuid for uuid, state in self._states.items() if state.healthy}

    def states(self) -> dict[str, GPUHealth]:
        """A consistent snapshot of every GPU's health."""
        with self._changed:
            return {
                uuid: GPUHealth(
                    healthy=state.healthy,
                    reason=state.reason,
                    since=state.since,
                    last_xid=state.last_xid,
                    clean_probes=state.clean_probes,
                    sticky=state.sticky,
                )
                for uuid, state in self._states.items()
            }

    def wait_for_change(self, generation: int, timeout_s: float, *, stop: threading.Event | None = None) -> int:
        """Block until `self.generation` differs from `generation`, `stop` is set (see `wake`) or
        `timeout_s` passes; return the generation."""
        with self._changed:
            self._changed.wait_for(
                lambda: self.generation != generation or (stop is not None and stop.is_set()),
                timeout=max(0.0, timeout_s),
            )
            return self.generation

    def wake(self) -> None:
        """Make every `wait_for_change` re-check its `stop` event now (a ListAndWatch stream ended)."""
        with self._changed:
            self._changed.notify_all()

    # --- internals ----------------------------------------------------------------------------------
    def _mark_unhealthy(self, gpu_uuid: str, cause: str, *, xid: int | None = None, sticky: bool = False) -> bool:
        with self._changed:
            state = self._states.get(gpu_uuid)
            if state is None:
                log.warning("health event for unknown GPU %s ignored: %s", gpu_uuid, cause)
                return False
            return self._mark_unhealthy_locked(gpu_uuid, state, cause, xid=xid, sticky=sticky)

    def _mark_unhealthy_locked(
        self, gpu_uuid: str, state: _GPUState, cause: str, *, xid: int | None = None, sticky: bool = False
    ) -> bool:
        now = self._clock()
        changed = state.healthy
        if xid is not None:
            state.last_xid = xid
        state.last_critical_at = now
        state.clean_probes = 0
        state.sticky = state.sticky or sticky
        # A sticky cause stays the reported cause until an admin clears it.
        if not (state.sticky and not sticky and not state.healthy):
            state.cause = cause
        state.reason = state.cause
        if changed:
            state.healthy = False
            state.since = now
            self.generation += 1
            self._changed.notify_all()
            log.error("GPU %s marked unhealthy: %s", gpu_uuid, cause)
        return changed

    def _set_healthy_locked(self, state: _GPUState, now: float, reason: str) -> None:
        state.healthy = True
        state.since = now
        state.reason = reason
        state.cause = ""
        state.clean_probes = 0
        state.sticky = False
        self.generation += 1
        self._changed.notify_all()


class HealthMonitor:
    """Background thread feeding a HealthTracker from a backend.

    Loops `backend.wait_for_events` (at most 0.5 s per wait, so XIDs reach the tracker at once
    and `stop` is prompt), and every `probe_interval_s` probes each GPU. A BackendError from the
    event wait marks every GPU unhealthy - like NVIDIA's plugin, we cannot vouch for GPUs we can no
    longer watch - and the thread carries on; probes can then recover them once events work again.
    """

    EVENT_WAIT_S = 0.5

    def __init__(self, backend: GPUBackend, tracker: HealthTracker, *, probe_interval_s: float = 5.0) -> None:
        if probe_interval_s <= 0:
            raise ValueError(f"probe_interval_s must be > 0, got {probe_interval_s}")
        self.backend = backend
        self.tracker = tracker
        self.probe_interval_s = probe_interval_s
        self._gpu_uuids = list(tracker.states())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("HealthMonitor already started")
        self._thread = threading.Thread(target=self._run, name="tensorai-health", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Ask the thread to end and wait up to `timeout_s` for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("health monitor thread did not stop within %.1f s", timeout_s)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        next_probe_at = time.monotonic()
        while not self._stop.is_set():
            try:
                if time.monotonic() >= next_probe_at:
                    self.probe_all()
                    next_probe_at = time.monotonic() + self.probe_interval_s
                wait_s = max(0.0, min(self.EVENT_WAIT_S, next_probe_at - time.monotonic()))
                self.poll_events(wait_s)
            except Exception:  # never let a bug in one round end health checking
                log.exception("health monitor round failed; continuing")
                self._stop.wait(self.EVENT_WAIT_S)

    def poll_events(self, timeout_s: float) -> None:
        """One event wait: feed XIDs to the tracker, or mark every GPU unhealthy if the wait fails."""
        try:
            events = self.backend.wait_for_events(timeout_s)
        except BackendError as error:
            log.error("waiting for GPU events failed, marking all GPUs unhealthy: %s", error)
            for uuid in self._gpu_uuids:
                self.tracker.record_failure(uuid, f"event wait failed: {error}")
            # Do not spin on a broken event source.
            self._stop.wait(self.EVENT_WAIT_S)
            return
        for event in events:
            self.tracker.record_xid(event.gpu_uuid, event.xid)

    def probe_all(self) -> None:
        """Probe every GPU once and feed the results to the tracker."""
        for uuid in self._gpu_uuids:
            try:
                ok = self.backend.probe(uuid)
            except GPULostError as error:
                log.error("GPU %s is lost: %s", uuid, error)
                self.tracker.record_lost(uuid)
                continue
            except BackendError as error:
                log.error("probing GPU %s failed: %s", uuid, error)
                ok = False
            self.tracker.record_probe(uuid, bool(ok))
