"""Kubernetes Events on the Node when one of its GPUs turns unhealthy or recovers.

Without them a sick GPU shows only as a lower Allocatable; with them `kubectl describe node` and
`kubectl get events` say which GPU (index, model, UUID), since when and why (the XID and what it
means). Like kubelet's own node events they are core/v1 Events in the `default` namespace whose
involvedObject is the Node, with the node's name as its uid (kubectl's node describer looks up
both the name and the real uid).

The events come from their own thread, which waits on `HealthTracker.wait_for_change` and compares
the tracker's snapshot with what it last reported: the health monitor never waits for the API
server, and the inventory publisher's patch is never delayed by an Event write. Rate limit: at most
one Event per GPU per state (unhealthy, healthy) per `min_interval_s` (60 s). A GPU that flaps
faster is reported when the window opens, in the state it is in then, with the number of flips
seen meanwhile - so the last Event about a GPU always tells its current state.
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from tensorai.deviceplugin.gpus import GPUInfo
from tensorai.deviceplugin.health import REASON_LOST, REASON_PROBE_FAILED, GPUHealth, HealthTracker
from tensorai.proto.kubeclient import RawCoreApi

log = logging.getLogger(__name__)

COMPONENT = "tensorai-device-plugin"
REASON_UNHEALTHY = "GPUUnhealthy"
REASON_HEALTHY = "GPUHealthy"
# Where kubelet's node events live: an Event for a cluster-scoped object goes to `default`
# (client-go's recorder puts an empty involvedObject namespace there).
NODE_EVENT_NAMESPACE = "default"
MIN_INTERVAL_S = 60.0
API_TIMEOUT_S = 5.0
_WAIT_SLICE_S = 1.0  # how often a held-back Event is re-checked and stop() is seen

# What the XIDs the health tracker acts on mean (NVIDIA's XID catalogue), in an operator's words.
XID_MEANINGS: dict[int, str] = {
    8: "GPU stopped processing (channel error)",
    32: "invalid or corrupted push buffer stream",
    38: "driver firmware error",
    48: "double-bit ECC error",
    56: "display engine error",
    57: "error programming video memory interface",
    61: "internal micro-controller breakpoint or warning",
    62: "internal micro-controller halt",
    63: "ECC page retirement or row remapping recorded",
    64: "ECC page retirement or row remapper failure",
    74: "NVLink error",
    79: "GPU has fallen off the bus",
    92: "high single-bit ECC error rate",
    94: "contained ECC error",
    95: "uncontained ECC error",
    119: "GSP RPC timeout",
    120: "GSP error",
}
_CAUSE_WORDS = {
    REASON_LOST: "lost: the GPU no longer answers the driver",
    REASON_PROBE_FAILED: "probe failed: a health query to the driver failed",
}


@dataclass(frozen=True, slots=True)
class NodeEvent:
    """One Event about the node, as written (also kept in `GPUHealthEvents.recent`)."""

    reason: str
    message: str
    warning: bool


def describe_cause(health: GPUHealth) -> str:
    """The tracker's reason with the XID's meaning added: "XID 79 (GPU has fallen off the bus; sticky: ...)"."""
    reason = health.reason or "no reason recorded"
    for cause, words in _CAUSE_WORDS.items():
        if reason == cause or reason.startswith(cause + ";"):
            return words + reason[len(cause):]
    xid = health.last_xid
    meaning = XID_MEANINGS.get(xid) if xid is not None else None
    prefix = f"XID {xid}"
    if meaning is None or not reason.startswith(prefix):
        return reason
    rest = reason[len(prefix):]
    if rest.startswith(" ("):  # "XID 48 (sticky: needs admin recover)..."
        return f"{prefix} ({meaning}; {rest[2:]}"
    return f"{prefix} ({meaning}){rest}"


def health_message(gpu: GPUInfo, health: GPUHealth, flips: int) -> str:
    """The Event text: which GPU, its new state, why, and what that means for pods."""
    name = f"GPU {gpu.index} ({gpu.model}, {gpu.uuid})"
    flapped = f"; it changed state {flips} times since the last event" if flips > 1 else ""
    if health.healthy:
        return f"{name} is healthy again: {health.reason or 'recovered'}; its slices are offered to pods again{flapped}"
    return (f"{name} is unhealthy: {describe_cause(health)}; kubelet gives its slices to no new pod and the "
            f"extender places no pod on it{flapped}")


class GPUHealthEvents:
    """Writes GPUUnhealthy / GPUHealthy Events on the Node from one thread, rate-limited per GPU and state.

    `core_api` None: events are only logged and kept in `recent` (the tests read it, so does a
    plugin without an API). `clock` is monotonic seconds, injectable for the rate-limit tests.
    """

    def __init__(
        self,
        core_api: RawCoreApi | None,
        tracker: HealthTracker,
        gpus: list[GPUInfo],
        *,
        node_name: str,
        min_interval_s: float = MIN_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        keep_recent: int = 100,
    ) -> None:
        if min_interval_s < 0:
            raise ValueError(f"min_interval_s must be >= 0, got {min_interval_s}")
        self.api = core_api
        self.tracker = tracker
        self.node_name = node_name
        self.min_interval_s = float(min_interval_s)
        self.clock = clock
        self.failed = 0  # Event writes the API refused or that timed out
        self.recent: list[NodeEvent] = []
        self._keep_recent = keep_recent
        self._gpus = {gpu.uuid: gpu for gpu in gpus}
        # Every GPU counts as reported healthy at start: one that is already sick gets its Event,
        # a healthy one none (kubelet's Allocatable says so already)
        self._reported = {uuid: True for uuid in self._gpus}
        self._last_at: dict[tuple[str, bool], float] = {}
        self._since = {uuid: health.since for uuid, health in tracker.states().items()}
        self._flips = dict.fromkeys(self._gpus, 0)
        self._host = socket.gethostname()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> list[NodeEvent]:
        """Compare the tracker with what was reported; write (and return) the Events now due."""
        states = self.tracker.states()
        now = self.clock()
        due: list[NodeEvent] = []
        for uuid, gpu in self._gpus.items():
            health = states.get(uuid)
            if health is None:
                continue
            if health.since != self._since.get(uuid):  # a flip (several in one wait count once)
                self._since[uuid] = health.since
                self._flips[uuid] += 1
            if health.healthy == self._reported[uuid]:
                continue
            last = self._last_at.get((uuid, health.healthy))
            if last is not None and now - last < self.min_interval_s:
                continue  # held back; re-checked every slice until its window opens
            event = NodeEvent(REASON_HEALTHY if health.healthy else REASON_UNHEALTHY,
                              health_message(gpu, health, self._flips[uuid]), not health.healthy)
            self._reported[uuid] = health.healthy
            self._last_at[(uuid, health.healthy)] = now
            self._flips[uuid] = 0
            due.append(event)
        for event in due:
            self._write(event)
        return due

    def _write(self, event: NodeEvent) -> None:
        self.recent = [*self.recent[-(self._keep_recent - 1):], event]
        (log.warning if event.warning else log.info)("node %s %s: %s", self.node_name, event.reason, event.message)
        if self.api is None:
            return
        try:
            self.api.create_event(NODE_EVENT_NAMESPACE, self.body(event), request_timeout_s=API_TIMEOUT_S)
        except Exception as error:  # an Event is advice: losing one must not stop health reporting
            self.failed += 1
            log.debug("could not write event %s on node %s: %s", event.reason, self.node_name, error)

    def body(self, event: NodeEvent) -> dict:
        """The core/v1 Event, as kubelet writes node events (namespace default, uid = node name)."""
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{self.node_name}.", "namespace": NODE_EVENT_NAMESPACE},
            "involvedObject": {"apiVersion": "v1", "kind": "Node", "name": self.node_name, "uid": self.node_name},
            "reason": event.reason,
            "message": event.message[:1024],
            "type": "Warning" if event.warning else "Normal",
            "source": {"component": COMPONENT, "host": self.node_name},
            "reportingComponent": COMPONENT,
            "reportingInstance": self._host,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }

    def start(self) -> GPUHealthEvents:
        """Report the GPUs already unhealthy, then follow every flip in a background thread."""
        if self._thread is not None:
            raise RuntimeError("GPUHealthEvents already started")
        self._thread = threading.Thread(target=self._run, name="tensorai-health-events", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                generation = self.tracker.generation
                self.check()
            except Exception:  # never let one round end the reporting
                log.exception("node %s: GPU health events round failed; continuing", self.node_name)
            self.tracker.wait_for_change(generation, _WAIT_SLICE_S, stop=self._stop)
