"""Bind: re-check the fit, choose the GPUs, reserve them and the quota, annotate the pod, then bind it.

No node lock: the fit check, GPU choice, quota check and reservation (`ClusterView.assume`) happen
in one short critical section on the in-memory view, so concurrent binds - also to one node - see
each other's reservations and can never over-commit a GPU or a quota. The API calls that follow
run outside any lock, many in flight at once. If either call fails the reservation is forgotten,
so a failed bind leaks no capacity.

Order follows the device plugin's identity protocol: the `tensor.ai/assignment` annotation arrives
with the Binding itself (the API server applies a Binding's annotations to the pod in the same write),
so when kubelet calls Allocate the plugin can already read which GPUs the extender chose.

The device plugin's bind rule (docs/deviceplugin.md, "Pod identity"): kubelet's Allocate names only a
size, so a pod must not be bound while another pod bound to that node with a container of the same
size but a different class still waits for Allocate - the plugin could not tell which pod a call is
for. `blocking_pods` applies `tensorai.proto.podslots.ambiguous_with` to the node's bound pods
still awaiting Allocate (indexed by the view); filter fails such a node (resolvable) and bind re-checks
it in the same critical section as the reservation.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tensorai.proto import contract
from tensorai.proto.kubeclient import RawCoreApi
from tensorai.proto.podslots import TERMINAL_PHASES, PodState, ambiguous_with, parse_pod
from tensorai.scheduler.core.context import PolicyContext
from tensorai.scheduler.core.fit import node_feasibility
from tensorai.scheduler.core.placement import choose_placement
from tensorai.scheduler.core.quota import quota_violations, usage_of_placement
from tensorai.scheduler.core.types import Placement, PodDemand
from tensorai.scheduler.events import REASON_BIND_FAILED, REASON_BOUND, EventRecorder, PodEvent
from tensorai.scheduler.metrics import ExtenderMetrics
from tensorai.scheduler.view import ClusterView, PodRecord, assignment_from_placement

log = logging.getLogger(__name__)

# Each API call of a bind gives up after this, so a hung API server fails the bind (and frees the
# reservation) before kube-scheduler's own extender timeout (httpTimeout, 5 s by default) expires.
API_TIMEOUT_S = 2.0


class _BoundPodStates:
    """`parse_pod(pod, node, 0)` of the pods awaiting Allocate, remembered by object identity.

    Every filter and bind of a pod of the same size re-reads the node's waiting pods (decoding each
    Assignment: ~0.1 ms a pod, a sixth of the extender's CPU during a burst of binds). The view never
    changes a pod object it holds - an update is a new object - so an object seen before reads the
    same; the strong reference kept with the answer stops its id from being reused meanwhile."""

    _LIMIT = 4096  # pods awaiting Allocate at once, cluster-wide, is far fewer

    def __init__(self) -> None:
        self._states: dict[int, tuple[Mapping[str, Any], str, PodState | None]] = {}

    def __call__(self, pod: Mapping[str, Any], node_name: str) -> PodState | None:
        known = self._states.get(id(pod))
        if known is not None and known[0] is pod and known[1] == node_name:
            return known[2]
        state = parse_pod(pod, node_name, 0)
        if len(self._states) >= self._LIMIT:
            self._states.clear()
        self._states[id(pod)] = (pod, node_name, state)
        return state


_bound_pod_states = _BoundPodStates()  # used under the view lock only


def blocking_pods(view: ClusterView, uid: str, pod: dict | None, demand: PodDemand, placement: Placement,
                  assignment_text: str) -> list[str]:
    """"namespace/name" of the pods bound to the placement's node that make binding this pod unsafe now.

    Call under the view lock. Cheap when nothing waits: only the node's pods still awaiting Allocate
    are looked at, and only those with a container of one of this pod's sizes are parsed.
    """
    waiting = view.awaiting_allocate(placement.node_name)
    if not waiting or pod is None:
        return []
    sizes = {c.milli * c.gpu_count for c in demand.containers}
    same_size = [other for other, other_sizes in waiting if not sizes.isdisjoint(other_sizes)]
    if not same_size:
        return []
    metadata = dict(pod.get("metadata") or {})
    metadata["uid"] = uid
    metadata["annotations"] = {**(metadata.get("annotations") or {}), contract.ANNOTATION_ASSIGNMENT: assignment_text}
    try:
        return ambiguous_with({**pod, "metadata": metadata}, same_size, placement.node_name, _bound_pod_states)
    except (AttributeError, TypeError, ValueError) as error:  # a pod body the plugin could not read either
        log.warning("bind rule: cannot read pod %s as the device plugin would: %s", uid, error)
        return []


def waiting_reason(node_name: str, blockers: list[str]) -> str:
    """Why a node must wait (filter's FailedNodes reason and bind's Error)."""
    return (
        f"waits for {', '.join(sorted(blockers))} on {node_name} to be allocated by the device plugin: "
        "a pod with a container of the same GPU size but another shape bound now could be handed its GPUs"
    )


class BindError(Exception):
    """A bind that must not happen; the message goes back to kube-scheduler in the `Error` field."""


@dataclass(frozen=True, slots=True)
class BindRequest:
    """ExtenderBindingArgs, validated."""

    pod_name: str
    pod_namespace: str
    pod_uid: str
    node: str

    @classmethod
    def from_json(cls, body: object) -> BindRequest:
        """Validate the bind body; BindError names the missing or mistyped key."""
        if not isinstance(body, dict):
            raise BindError(f"bind body must be a JSON object, got {type(body).__name__}")
        values = {}
        for key in ("PodName", "PodNamespace", "PodUID", "Node"):
            value = body.get(key)
            # PodUID too: kube-scheduler always sends the pod's metadata.uid, and without it bind could
            # not tell the pod it checked from another of the same name
            if not isinstance(value, str) or not value:
                raise BindError(f"bind body: {key} must be a non-empty string, got {value!r}")
            values[key] = value
        return cls(values["PodName"], values["PodNamespace"], values["PodUID"], values["Node"])


class Binder:
    """Performs binds against the API server (api_client given) or only in the view (cluster-file mode)."""

    def __init__(
        self,
        view: ClusterView,
        *,
        policy: str,
        context: Callable[[], PolicyContext | None] = lambda: None,
        api_client: object | None = None,
        events: EventRecorder | None = None,
        metrics: ExtenderMetrics | None = None,
        scheduler_name: str = contract.SCHEDULER_NAME,
    ) -> None:
        self.view = view
        self.policy = policy
        self.scheduler_name = scheduler_name  # bind refuses pods whose spec.schedulerName is another's
        self.context = context
        self.events = events or EventRecorder()
        self.metrics = metrics or ExtenderMetrics()
        self._core = RawCoreApi(api_client) if api_client is not None else None
        self._in_flight = 0
        self._in_flight_lock = threading.Lock()

    # ------------------------------------------------------------------ steps
    def _pod_record(self, request: BindRequest) -> PodRecord:
        """The pod to bind as the API has it, checked: bind never acts on a pod body someone posted.

        API mode: the watch's copy of the pending pod (the view's record, demand parsed from it), or
        one GET when the watch has not shown it yet; its uid must be the bind's PodUID, its
        spec.schedulerName ours, and it must be neither bound nor finished nor being deleted.
        Cluster-file mode has no API: the filter body's demand is all there is (demos, benchmarks).
        """
        uid = request.pod_uid
        view = self.view
        record = view.pod(uid)
        if self._core is None:
            record = record or view.adopt_pending(uid)
            if record is None:
                raise BindError(
                    f"pod {request.pod_namespace}/{request.pod_name} (uid {uid}) is unknown to the extender; "
                    "it must pass filter first"
                )
        else:
            api_pod = None if record is None else record.pod
            if record is None or (api_pod is None and record.node_name is None):
                api_pod = self._core.read_pod(request.pod_namespace, request.pod_name,
                                              request_timeout_s=API_TIMEOUT_S)
                api_uid = (api_pod.get("metadata") or {}).get("uid")
                if api_uid != uid:
                    raise BindError(
                        f"pod {request.pod_namespace}/{request.pod_name} has uid {api_uid} in the API, not the "
                        f"bind's PodUID {uid}"
                    )
                record = view.adopt_api_pod(api_pod)
                if record is None:
                    raise BindError(f"pod {request.pod_namespace}/{request.pod_name}: the API's copy has no name")
            if api_pod is not None:
                self._check_bindable(request, api_pod)
        if (record.namespace, record.name) != (request.pod_namespace, request.pod_name):
            raise BindError(f"pod uid {uid} belongs to {record.namespace}/{record.name}, not the pod to bind")
        return record

    def _check_bindable(self, request: BindRequest, pod: dict) -> None:
        """Refuse an API pod this extender must not bind: another scheduler's, bound, finished or going."""
        where = f"pod {request.pod_namespace}/{request.pod_name}"
        spec = pod.get("spec") if isinstance(pod.get("spec"), dict) else {}
        metadata = pod.get("metadata") if isinstance(pod.get("metadata"), dict) else {}
        status = pod.get("status") if isinstance(pod.get("status"), dict) else {}
        scheduler = spec.get("schedulerName") or "default-scheduler"  # the API server's default
        if scheduler != self.scheduler_name:
            raise BindError(f"{where} has spec.schedulerName {scheduler!r}; this extender binds only "
                            f"{self.scheduler_name!r} pods")
        if spec.get("nodeName"):
            raise BindError(f"{where} is already bound to {spec['nodeName']}")
        if status.get("phase") in TERMINAL_PHASES:
            raise BindError(f"{where} has finished ({status['phase']})")
        if metadata.get("deletionTimestamp"):
            raise BindError(f"{where} is being deleted")

    def _reserve(self, request: BindRequest, record: PodRecord) -> tuple[str, str]:
        """Fit, choose GPUs, check quota and assume - atomically.

        Returns (assignment JSON, the bound Event's message): the message reads the node's pods and
        arrays, so it is built here, under the lock the reservation already holds, not in a second one."""
        demand = record.demand
        if demand is None:
            raise BindError(f"pod {record.namespace}/{record.name}: {record.demand_error}")
        view = self.view
        with view.lock:
            if record.node_name is not None:
                raise BindError(
                    f"pod {record.namespace}/{record.name} already holds GPUs on {record.node_name} "
                    f"({'bind in flight' if record.assumed else 'bound'})"
                )
            view.refresh_schedulable()
            index = view.node_index(request.node)
            problem = view.node_problem(request.node)
            if index is None or problem is not None:
                raise BindError(f"cannot bind to {request.node}: {problem}")
            policy = demand.policy or self.policy
            placement = choose_placement(view.cluster, demand, policy, index, context=self.context())
            if placement is None:
                _, reasons = node_feasibility(view.cluster, demand, [index])
                reason = reasons.get(index, ("no GPU placement found", True))[0]
                raise BindError(f"pod no longer fits on {request.node}: {reason}")
            node = view.node_record(request.node)
            usage = usage_of_placement(demand, placement, node.model if node else None)  # what its GPUs hold
            violations = quota_violations(view.quotas(record.namespace), view.used(record.namespace), usage)
            if violations:
                raise BindError("; ".join(violations))
            assignment = assignment_from_placement(placement, record.uid)
            text = contract.encode_assignment(assignment)
            blockers = blocking_pods(view, record.uid, record.pod, demand, placement, text)
            if blockers:
                raise BindError(waiting_reason(request.node, blockers))
            view.assume(record.uid, placement, text)
            return text, bound_message(view, record.uid, placement, policy)

    def _write(self, request: BindRequest, record: PodRecord, text: str) -> None:
        """One Binding that carries the Assignment: the API server sets spec.nodeName and copies the
        Binding's annotations onto the pod in the same write, so no watcher - kubelet, the device
        plugin - ever sees the pod bound without its Assignment, and a bind costs one API write (it
        was a PATCH then the Binding: half of the extender's API time through kube-scheduler)."""
        core = self._core
        if core is None:
            self.view.confirm_bound(record.uid)
            return
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            # metadata.uid is a precondition: a new pod of the same name is never bound by mistake
            "metadata": {"name": request.pod_name, "namespace": request.pod_namespace, "uid": request.pod_uid,
                         "annotations": {contract.ANNOTATION_ASSIGNMENT: text}},
            "target": {"apiVersion": "v1", "kind": "Node", "name": request.node},
        }
        core.create_pod_binding(request.pod_namespace, request.pod_name, binding, request_timeout_s=API_TIMEOUT_S)

    def _track(self, delta: int) -> None:
        with self._in_flight_lock:
            self._in_flight += delta
            self.metrics.binds_in_flight.set(self._in_flight)

    # ------------------------------------------------------------------ the verb
    def bind(self, request: BindRequest) -> str:
        """Bind a pod; returns "" on success or the error text for ExtenderBindingResult.Error."""
        try:
            record = self._pod_record(request)
            text, message = self._reserve(request, record)
        except BindError as error:
            self.metrics.binds.labels("rejected").inc()
            self.events.record(
                PodEvent(request.pod_namespace, request.pod_name, request.pod_uid, REASON_BIND_FAILED, str(error), True)
            )
            return str(error)
        except Exception as error:  # API read of the pod failed
            self.metrics.binds.labels("error").inc()
            return f"bind of {request.pod_namespace}/{request.pod_name}: cannot read the pod: {error}"
        self._track(+1)
        try:
            self._write(request, record, text)
        except Exception as error:  # an API failure: report it and let kube-scheduler retry
            definite = isinstance(getattr(error, "status", None), int) and error.status > 0
            if definite:  # the API server answered no: give the reservation back at once
                self.view.forget_assumed(record.uid)
            # else (timeout, connection lost) the Binding may have happened: keep the reservation so
            # nothing else takes these GPUs; the watch or `reconcile_assumed` settles it either way
            self.metrics.binds.labels("error").inc()
            message = f"bind of {request.pod_namespace}/{request.pod_name} to {request.node} failed: {_short(error)}"
            self.events.record(
                PodEvent(request.pod_namespace, request.pod_name, request.pod_uid, REASON_BIND_FAILED, message, True)
            )
            return message
        finally:
            self._track(-1)
        self.metrics.binds.labels("bound").inc()
        self.events.record(PodEvent(request.pod_namespace, request.pod_name, request.pod_uid, REASON_BOUND, message))
        return ""


# What each policy prefers, in the words a pod's owner reads in `kubectl describe pod`
POLICY_AIMS: dict[str, str] = {
    "tensorai": "packs GPU shares tightly to keep whole GPUs free",
    "fgd": "fragments the cluster's free GPU capacity least",
    "binpack": "fills partly used GPUs before touching idle ones",
    "bestfit": "leaves the least room unused on the node",
    "spread": "leaves the most room free on the node",
    "random": "picks at random among the GPUs that fit",
}
_MAX_GPUS_NAMED = 8  # an 8-GPU pod is named in full; beyond that the Event says how many more


def _memory_words(memory_mib: int) -> str:
    """MiB as a person reads it: "20 GiB", "79.6 GiB", "512 MiB"."""
    if memory_mib < 1024:
        return f"{memory_mib} MiB"
    gib = memory_mib / 1024
    return f"{gib:.0f} GiB" if memory_mib % 1024 == 0 else f"{gib:.1f} GiB"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def bound_message(view: ClusterView, uid: str, placement: Placement, policy: str) -> str:
    """The TensorAIScheduled Event's text: where each container's GPU share went and why, in words.

    Call under the view lock, after `assume`, so the node's pods and arrays include this pod. Says the
    facts that explain a choice - the GPU's index and model, how many other pods share it, the whole
    GPUs left free on the node, the policy and what it prefers - never the policy's internal score
    (a number like -1e+07 means nothing to the pod's owner). Cost: the node's pods and GPUs only, no
    API call; bind builds it once.
    """
    node = view.node_record(placement.node_name)
    # (uuid, NVML index, model, ...) per array slot, in the Inventory's order (`ClusterView.upsert_node`)
    described = node.fingerprint[0] if node is not None and node.fingerprint else ()
    chosen = {choice.uuid for choice in placement.choices}
    sharers = dict.fromkeys(chosen, 0)  # other pods holding a share of each chosen GPU
    if chosen:
        for other in view.pods_on_node(placement.node_name):
            if other.uid != uid:
                for uuid in chosen.intersection([share.uuid for share in other.shares]):
                    sharers[uuid] += 1
    parts = []
    for choice in placement.choices[:_MAX_GPUS_NAMED]:
        gpu_index, model = choice.gpu_slot, node.model if node is not None else None
        if choice.gpu_slot < len(described):
            gpu_index, model = described[choice.gpu_slot][1], described[choice.gpu_slot][2]
        others = sharers.get(choice.uuid, 0)
        share = "a whole GPU" if choice.milli >= contract.MILLI_PER_GPU else f"{choice.milli} milli-GPU"
        parts.append(
            f"container {choice.container} gets {share} ({_memory_words(choice.memory_mib)}) on GPU {gpu_index}"
            + (f" ({model})" if model else "")
            + (f", shared with {_plural(others, 'other pod')}" if others else "")
        )
    if len(placement.choices) > _MAX_GPUS_NAMED:
        parts.append(f"and {len(placement.choices) - _MAX_GPUS_NAMED} more GPUs")
    cluster, row = view.cluster, placement.node_index
    count = int(cluster.gpu_count[row])
    whole_free = int(((cluster.gpu_free_milli[row, :count] >= contract.MILLI_PER_GPU)
                      & cluster.gpu_healthy[row, :count]).sum())
    if not placement.choices:
        did = "asks for no GPU"
    elif any(sharers.get(choice.uuid) for choice in placement.choices):
        did = "fills a partly used GPU"
    elif all(choice.milli >= contract.MILLI_PER_GPU for choice in placement.choices):
        did = f"takes {_plural(len(placement.choices), 'idle GPU')} whole"
    else:
        did = "opens an idle GPU"
    aim = POLICY_AIMS.get(policy)
    return (
        f"bound to {placement.node_name}: {'; '.join(parts) or 'no GPU share'}; chosen by policy {policy}"
        + (f" ({aim})" if aim else "")
        + (f": {did}, keeping {_plural(whole_free, 'whole GPU')} free on the node" if whole_free
           else f": {did}; no whole GPU is left free on the node")
    )


class AssumedReconciler:
    """Settles binds whose outcome the extender never learned (a timed-out call, a lost watch event).

    Every `interval_s` it reads each pod assumed longer than `max_age_s` ago: bound with our
    assignment -> confirmed; not bound or gone -> the reservation is given back. So an uncertain
    bind can hold capacity for at most about `max_age_s + interval_s`.
    """

    def __init__(self, view: ClusterView, api_client: object, *, max_age_s: float = 30.0, interval_s: float = 15.0):
        self.view = view
        self.core = RawCoreApi(api_client)
        self.max_age_s = max_age_s
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def reconcile(self) -> int:
        """One pass; returns how many reservations were settled."""
        from kubernetes.client.exceptions import ApiException

        settled = 0
        for record in self.view.assumed_older_than(self.max_age_s):
            try:
                pod = self.core.read_pod(record.namespace, record.name, request_timeout_s=API_TIMEOUT_S)
            except ApiException as error:
                if error.status == 404:
                    self.view.forget_pod_uid(record.uid)
                    settled += 1
                continue
            except Exception as error:  # the API is unreachable: try again next pass
                log.debug("cannot read assumed pod %s/%s: %s", record.namespace, record.name, error)
                continue
            if (pod.get("metadata") or {}).get("uid") not in (record.uid, None):
                self.view.forget_pod_uid(record.uid)  # a new pod of the same name; ours is gone
            elif (pod.get("spec") or {}).get("nodeName"):
                self.view.upsert_pod(pod)  # bound: confirm (or take what the API says)
            else:
                self.view.forget_assumed(record.uid)
            settled += 1
        return settled

    def start(self) -> AssumedReconciler:
        """Run `reconcile` every interval in a background thread."""
        self._thread = threading.Thread(target=self._run, name="assumed-reconciler", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.reconcile()
            except Exception:  # the loop must survive anything one pass hits
                log.exception("reconciling assumed pods failed")

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)


def _short(error: Exception) -> str:
    status = getattr(error, "status", None)
    reason = getattr(error, "reason", None)
    if status is not None:
        return f"HTTP {status} {reason or ''}".strip()
    return str(error)[:300]
