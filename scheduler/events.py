"""Kubernetes Events on pods, so `kubectl describe pod` says where a pod went and why it waits.

Events are written by a background thread from a bounded queue: a slow or failing API server must
never slow a bind down, and an event storm drops events (counted) rather than memory. Without an
API client (cluster-file mode) events are only logged and kept in `recent` (tests read it).

No leadership check here: with two scheduler replicas, the events of the verbs come only from the
leader's extender (only the leading kube-scheduler calls verbs), and they record what happened
(a Binding created, a pod turned away) even in the instant before this replica's Lease watch
reports the take-over; the quota controller's requeue Events are gated with its requeues.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import socket
import threading
from collections import deque
from dataclasses import dataclass

from tensorai.proto.kubeclient import RawCoreApi

log = logging.getLogger(__name__)

COMPONENT = "tensorai-extender"
REASON_BOUND = "TensorAIScheduled"
REASON_BIND_FAILED = "TensorAIBindFailed"
REASON_QUOTA_WAIT = "TensorAIQuotaWait"
REASON_REQUEUED = "TensorAIQuotaFreed"


@dataclass(frozen=True, slots=True)
class PodEvent:
    """One event about one pod."""

    namespace: str
    pod_name: str
    pod_uid: str
    reason: str
    message: str
    warning: bool = False


class EventRecorder:
    """Queues pod events and writes them as core/v1 Events from one thread."""

    def __init__(self, api_client: object | None = None, *, max_queue: int = 10_000, keep_recent: int = 1000) -> None:
        self._core = RawCoreApi(api_client) if api_client is not None else None
        self._queue: queue.Queue[PodEvent | None] = queue.Queue(max_queue)
        self.recent: deque[PodEvent] = deque(maxlen=keep_recent)
        self.dropped = 0
        self.failed = 0
        self._host = socket.gethostname()
        self._thread: threading.Thread | None = None

    def start(self) -> EventRecorder:
        """Start the writer thread (only needed with an API client)."""
        if self._core is not None and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="events", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Flush what is queued (up to the timeout) and stop."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout_s)
            self._thread = None

    def record(self, event: PodEvent) -> None:
        """Queue an event; never blocks."""
        self.recent.append(event)
        log.info(
            "%s/%s %s: %s",
            event.namespace,
            event.pod_name,
            event.reason,
            event.message,
        )
        if self._core is None:
            return
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.dropped += 1

    def _body(self, event: PodEvent) -> dict:
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{event.pod_name}.", "namespace": event.namespace},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": event.pod_name,
                "namespace": event.namespace,
                "uid": event.pod_uid,
            },
            "reason": event.reason,
            "message": event.message[:1024],
            "type": "Warning" if event.warning else "Normal",
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": self._host,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            if event is None:
                return
            try:
                # raw JSON: the generated client's validation and CoreV1Event model cost more CPU than the write
                self._core.create_event(event.namespace, self._body(event))  # type: ignore[union-attr]
            except Exception as error:  # an event is advice; losing one must not stop the others
                self.failed += 1
                log.debug("could not write event for %s/%s: %s", event.namespace, event.pod_name, error)
