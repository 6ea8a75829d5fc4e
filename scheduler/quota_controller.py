"""Keeps GPUQuota `status.used` current and re-activates pods that wait for quota as soon as it frees.

Why the requeue: kube-scheduler parks a pod that an extender rejected in its unschedulable queue;
no cluster event it knows of is tied to our quota, so the pod can sit there for up to 5 minutes
(podMaxInUnschedulablePodsDuration; kubernetes #122019). Any update of the pod object itself moves
it back to the active/backoff queue (a pod rejected by no in-tree plugin is requeued on every
event). So when quota frees in a namespace, this controller patches an annotation onto each
waiting pod that would now fit; the scheduler retries it at once (after its per-pod backoff,
1-10 s by default). Patches happen only when the namespace's usage changed since the pod's last
requeue, so a pod that still does not fit is not patched in a loop.

Triggered by the view (`wait_dirty`) the moment usage falls, and every `interval_s` as a safety net.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable

from tensorai.proto import contract
from tensorai.scheduler.core.quota import HARD_MODELS, Usage, estimate_usage, quota_violations, status_used
from tensorai.scheduler.events import REASON_REQUEUED, EventRecorder, PodEvent
from tensorai.scheduler.metrics import ExtenderMetrics
from tensorai.scheduler.view import ClusterView

log = logging.getLogger(__name__)

ANNOTATION_QUOTA_REQUEUE = contract.ANNOTATION_QUOTA_REQUEUE


class QuotaController:
    """One background thread: requeue waiting pods when quota frees, write status.used."""

    def __init__(
        self,
        view: ClusterView,
        *,
        api_client: object | None = None,
        interval_s: float = 5.0,
        metrics: ExtenderMetrics | None = None,
        events: EventRecorder | None = None,
        on_requeue: Callable[[str, str, str], None] | None = None,
        status_min_interval_s: float = 0.5,
    ) -> None:
        self.view = view
        self.interval_s = interval_s
        self.metrics = metrics or ExtenderMetrics()
        self.events = events or EventRecorder()
        self.on_requeue = on_requeue  # (namespace, name, uid) - cluster-file mode and tests
        self._core = self._custom = None
        if api_client is not None:
            from kubernetes import client

            self._core = client.CoreV1Api(api_client)
            self._custom = client.CustomObjectsApi(api_client)
        self._requeued_at_usage: dict[str, Usage] = {}  # uid -> namespace usage when last requeued
        self._status_written: dict[tuple[str, str], dict] = {}
        self._status_at: dict[str, float] = {}  # namespace -> time.monotonic() of its last status write
        self.status_min_interval_s = status_min_interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.requeue_delays_s: list[float] = []  # from quota freeing to the requeue patch, for the benchmark

    def start(self) -> QuotaController:
        """Start the controller thread."""
        self._thread = threading.Thread(target=self._run, name="quota-controller", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread."""
        self._stop.set()
        self.view.wake()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        next_full = time.monotonic() + self.interval_s
        deferred: dict[str, float] = {}  # namespace -> when its status may be written again
        while not self._stop.is_set():
            due = min([next_full, *deferred.values()])
            dirty = self.view.wait_dirty(max(0.0, due - time.monotonic()))
            if self._stop.is_set():
                return
            now = time.monotonic()
            if now >= next_full:
                dirty |= set(self.view.waiting_namespaces()) | {q.namespace for q in self.view.all_quotas()}
                next_full = now + self.interval_s
            dirty |= {namespace for namespace, when in deferred.items() if when <= now}
            for namespace in sorted(dirty):
                deferred.pop(namespace, None)
                try:
                    self._requeue(namespace)  # at once: this is what the waiting pods wait for
                    if now - self._status_at.get(namespace, -1e9) >= self.status_min_interval_s:
                        self._write_status(namespace)
                        self._status_at[namespace] = now
                    else:  # a burst of binds: one status write per interval, the last one current
                        deferred[namespace] = self._status_at[namespace] + self.status_min_interval_s
                except Exception:  # one namespace's API failure must not stop the others
                    log.exception("quota sync of namespace %s failed", namespace)

    def sync_namespace(self, namespace: str) -> int:
        """Requeue the namespace's waiting pods that now fit and write its quotas' status; returns requeues."""
        requeued = self._requeue(namespace)
        self._write_status(namespace)
        return requeued

    def _requeue(self, namespace: str) -> int:
        view = self.view
        requeued = 0
        used = view.used(namespace)
        limits = view.quotas(namespace)
        for uid, (name, _reason, _since) in view.waiting(namespace).items():
            demand = view.waiting_demand(uid)
            if demand is None:
                continue
            if self._requeued_at_usage.get(uid) == used:
                continue  # nothing changed since we last woke this pod
            if quota_violations(limits, used, estimate_usage(demand, None, None)):
                continue
            self._requeued_at_usage[uid] = used
            if len(self._requeued_at_usage) > 100_000:
                self._requeued_at_usage.pop(next(iter(self._requeued_at_usage)))
            try:
                self._touch(namespace, name, uid)
            except Exception as error:
                log.warning("could not requeue %s/%s: %s", namespace, name, error)
                self._requeued_at_usage.pop(uid, None)
                continue
            requeued += 1
            freed = view.freed_at(namespace)
            if freed is not None:
                delay_s = time.monotonic() - freed
                self.requeue_delays_s.append(delay_s)
                self.metrics.requeue_delay_s.observe(delay_s)
            self.metrics.requeues.inc()
            self.events.record(
                PodEvent(namespace, name, uid, REASON_REQUEUED, "GPU quota freed; asking the scheduler to retry")
            )
        return requeued

    def _touch(self, namespace: str, name: str, uid: str) -> None:
        if self.on_requeue is not None:
            self.on_requeue(namespace, name, uid)
        if self._core is None:
            return
        stamp = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
        self._core.patch_namespaced_pod(
            name,
            namespace,
            {"metadata": {"annotations": {ANNOTATION_QUOTA_REQUEUE: stamp}}},
            _content_type="application/merge-patch+json",
            _preload_content=False,
        )

    def _write_status(self, namespace: str) -> None:
        if self._custom is None:
            return
        used = status_used(self.view.used(namespace))
        waiting = len(self.view.waiting(namespace))
        for limits in self.view.quotas(namespace):
            status = {"used": used, "waitingPods": waiting}
            key = (namespace, limits.name)
            previous = self._status_written.get(key)
            if previous == status:
                continue
            body_used = dict(used)
            if previous is not None:  # a merge patch keeps absent keys: null the models that went to zero
                gone = set(previous["used"][HARD_MODELS]) - set(used[HARD_MODELS])
                body_used[HARD_MODELS] = {**used[HARD_MODELS], **dict.fromkeys(gone)}
            self._custom.patch_namespaced_custom_object_status(
                contract.QUOTA_GROUP,
                contract.QUOTA_VERSION,
                namespace,
                contract.QUOTA_PLURAL,
                limits.name,
                {"status": {"used": body_used, "waitingPods": waiting}},
                _content_type="application/merge-patch+json",
                _preload_content=False,
            )
            self._status_written[key] = status
