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

Only the leader writes (status, requeue patches and their Events): with two scheduler replicas the
standby's kube-scheduler never calls its extender, so the standby's view has no waiting pods and its
`waitingPods: 0` would overwrite the leader's count (`scheduler/leader.py` says who leads). Nothing is
written before the view has listed every kind, either: a status computed from half a list is wrong.
When this replica becomes the leader it writes every quota's status at once, compared with what the
API holds (the previous leader's last write), so an unchanged status is not written again.

Status carries `conditions` in the metav1.Condition shape: `Ready` (the spec was read and is
enforced) and `QuotaExceeded` (pods wait for this quota; the message names the limit they hit).
`lastTransitionTime` changes only when a condition's status flips, and `observedGeneration` says
which spec the status describes.
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
from tensorai.scheduler.leader import AlwaysLeader, Leadership
from tensorai.scheduler.metrics import ExtenderMetrics
from tensorai.scheduler.view import ClusterView

log = logging.getLogger(__name__)

ANNOTATION_QUOTA_REQUEUE = contract.ANNOTATION_QUOTA_REQUEUE

CONDITION_READY = "Ready"
CONDITION_QUOTA_EXCEEDED = "QuotaExceeded"
_OWNED_CONDITIONS = (CONDITION_READY, CONDITION_QUOTA_EXCEEDED)
_OWNED_STATUS_KEYS = ("used", "waitingPods", "observedGeneration", "conditions")
MAX_CONDITION_MESSAGE = 1024  # metav1.Condition allows 32768; a line for kubectl describe is enough


def _condition(
    condition_type: str,
    status: bool,
    reason: str,
    message: str,
    generation: int | None,
    previous: list | None,
    now: str,
) -> dict:
    """One metav1.Condition; its lastTransitionTime is the previous one's unless the status flipped."""
    status_text = "True" if status else "False"
    transition = now
    for old in previous or []:
        if isinstance(old, dict) and old.get("type") == condition_type and old.get("status") == status_text:
            transition = str(old.get("lastTransitionTime") or now)
    condition = {
        "type": condition_type,
        "status": status_text,
        "reason": reason,
        "message": message[:MAX_CONDITION_MESSAGE],
        "lastTransitionTime": transition,
    }
    if generation is not None:
        condition["observedGeneration"] = generation
    return condition


def quota_conditions(
    namespace: str,
    name: str,
    waiting: dict[str, tuple[str, str, float]],
    generation: int | None,
    previous: list | None,
    now: str,
) -> list[dict]:
    """`Ready` and `QuotaExceeded` of one parsed GPUQuota, from the namespace's waiting pods and their reasons.

    A waiting pod counts for this quota when its filter reason names it (`GPUQuota ns/name: ...`, the
    form `core.quota.quota_violations` writes); the message quotes the oldest waiter's reason, which
    names the limit (gpus, memory, a model, maxGpusPerPod).
    """
    prefix = f"{contract.QUOTA_KIND} {namespace}/{name}: "
    blocked = []
    for pod_name, reason, since in waiting.values():
        parts = [part for part in reason.split("; ") if part.startswith(prefix)]
        if parts:
            blocked.append((since, pod_name, "; ".join(part[len(prefix) :] for part in parts)))
    enforced = "spec.hard is read and enforced at filter and bind"
    ready = _condition(CONDITION_READY, True, "Enforced", enforced, generation, previous, now)
    if blocked:
        _since, first_pod, first_reason = min(blocked)
        count = f"{len(blocked)} pod{'s' if len(blocked) != 1 else ''}"
        exceeded = _condition(
            CONDITION_QUOTA_EXCEEDED,
            True,
            "PodsWaiting",
            f"{count} waiting for this quota; {namespace}/{first_pod}: {first_reason}",
            generation,
            previous,
            now,
        )
    else:
        exceeded = _condition(
            CONDITION_QUOTA_EXCEEDED, False, "NoPodsWaiting", "no pod waits for this quota", generation, previous, now
        )
    return [ready, exceeded]


def _owned_status(status: object) -> dict:
    """The part of an API object's status this controller writes (to compare with what it would write)."""
    if not isinstance(status, dict):
        return {}
    owned = {key: status[key] for key in _OWNED_STATUS_KEYS if key in status}
    if "conditions" in owned:
        conditions = owned["conditions"] if isinstance(owned["conditions"], list) else []
        owned["conditions"] = [c for c in conditions if isinstance(c, dict) and c.get("type") in _OWNED_CONDITIONS]
    return owned


class QuotaController:
    """One background thread: requeue waiting pods when quota frees, write GPUQuota status (leader only)."""

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
        leader: Leadership | None = None,
        wall_clock: Callable[[], dt.datetime] | None = None,
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
        self.leader: Leadership = leader if leader is not None else AlwaysLeader()
        self.wall_clock = wall_clock or (lambda: dt.datetime.now(dt.UTC))  # conditions' lastTransitionTime
        self._leadership_flipped = threading.Event()
        self.leader.on_change(self._on_leadership)

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

    def may_write(self) -> bool:
        """True while this replica leads and its view has listed everything (see the module docstring)."""
        return self.leader.is_leader() and self.view.ready

    def _on_leadership(self, _leading: bool) -> None:
        """Leadership flipped: wake the loop until it has seen it (a lone wake can land before it waits)."""
        self._leadership_flipped.set()
        deadline = time.monotonic() + 2.0
        while (
            self._leadership_flipped.is_set()
            and self._thread is not None
            and self._thread.is_alive()
            and time.monotonic() < deadline
        ):
            self.view.wake()
            time.sleep(0.01)

    def _forget_writes(self) -> None:
        """Drop what this replica remembers writing: another leader may have written since."""
        self._status_written.clear()
        self._status_at.clear()
        self._requeued_at_usage.clear()

    def _all_namespaces(self) -> set[str]:
        return set(self.view.waiting_namespaces()) | {q.namespace for q in self.view.all_quotas()}

    def _run(self) -> None:
        next_full = time.monotonic() + self.interval_s
        deferred: dict[str, float] = {}  # namespace -> when its status may be written again
        leading = False
        while not self._stop.is_set():
            due = min([next_full, *deferred.values()])
            dirty = self.view.wait_dirty(0.0 if self._leadership_flipped.is_set() else max(0.0, due - time.monotonic()))
            if self._stop.is_set():
                return
            flipped = self._leadership_flipped.is_set()  # also lost and regained between two passes
            self._leadership_flipped.clear()
            now = time.monotonic()
            writing = self.may_write()
            if writing != leading or flipped:
                leading = writing
                self._forget_writes()
                if leading:  # took over (or started): every quota's status at once, this view's numbers
                    dirty |= self._all_namespaces()
                    next_full = now + self.interval_s
            if not leading:  # the leader's extender writes; this one keeps its view warm
                deferred.clear()
                continue
            if now >= next_full:
                dirty |= self._all_namespaces()
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
        """Requeue the namespace's waiting pods that now fit and write its quotas' status; returns requeues.

        Does nothing (returns 0) unless `may_write()`.
        """
        if not self.may_write():
            return 0
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
        usage = self.view.used(namespace)
        waiting = self.view.waiting(namespace)
        now = self.wall_clock().strftime("%Y-%m-%dT%H:%M:%SZ")
        for limits in self.view.quotas(namespace):
            used = status_used(usage, limits)  # models: this quota's own keys, each counting what it matches
            key = (namespace, limits.name)
            observed = self.view.quota_object(namespace, limits.name) or {}
            generation = (observed.get("metadata") or {}).get("generation")
            generation = generation if isinstance(generation, int) and not isinstance(generation, bool) else None
            previous = self._status_written.get(key)
            if previous is None:  # first write since start or take-over: compare with what the API holds
                previous = _owned_status(observed.get("status"))
            status: dict = {"used": used, "waitingPods": len(waiting)}
            if generation is not None:
                status["observedGeneration"] = generation
            status["conditions"] = quota_conditions(
                namespace, limits.name, waiting, generation, previous.get("conditions"), now
            )
            if previous == status:
                continue
            body_used = dict(used)
            previous_models = (previous.get("used") or {}).get(HARD_MODELS)
            if isinstance(previous_models, dict):  # a merge patch keeps absent keys: null the models gone to zero
                gone = set(previous_models) - set(used[HARD_MODELS])
                body_used[HARD_MODELS] = {**used[HARD_MODELS], **dict.fromkeys(gone)}
            observed_conditions = (observed.get("status") or {}).get("conditions")
            foreign = [  # a list is replaced whole by a merge patch: keep conditions other writers set
                c
                for c in (observed_conditions if isinstance(observed_conditions, list) else [])
                if isinstance(c, dict) and c.get("type") not in _OWNED_CONDITIONS
            ]
            body = {**status, "used": body_used, "conditions": status["conditions"] + foreign}
            self._custom.patch_namespaced_custom_object_status(
                contract.QUOTA_GROUP,
                contract.QUOTA_VERSION,
                namespace,
                contract.QUOTA_PLURAL,
                limits.name,
                {"status": body},
                _content_type="application/merge-patch+json",
                _preload_content=False,
            )
            self._status_written[key] = status
