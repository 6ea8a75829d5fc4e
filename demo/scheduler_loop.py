"""A small kube-scheduler: one pod at a time, the extender called with kube-scheduler's exact JSON.

Per pod (reference/extender-api.md): the in-tree node-resource fit on the advertised
`tensor.ai/vgpu-milli` (allocatable minus what bound pods request), then POST /filter with
`NodeNames` and `"Nodes": null` (nodeCacheCapable: true) - a null NodeNames result means no node
passes -, POST /prioritize (a bare HostPriority array; each score counts Score x weight x 10), the
highest total wins (ties broken at random, as kube-scheduler does), then POST /bind, which the
extender performs. An unschedulable pod is retried on the next pass, like kube-scheduler's backoff
queue; the extender's quota controller also nudges waiting pods when quota frees.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Callable
from typing import Any

from kubernetes import client

from tensorai.demo.cluster import post_json
from tensorai.demo.scenario import SCHEDULER_NAME
from tensorai.demo.state import BOUND, PENDING, UNSCHEDULABLE, WAITING_QUOTA, DemoState
from tensorai.proto import contract
from tensorai.proto.quantity import QuantityError, quantity_to_int

EXTENDER_WEIGHT = 5  # as in the manifests' KubeSchedulerConfiguration
MAX_NODE_SCORE_PER_EXTENDER_PRIORITY = 10  # MaxNodeScore 100 / MaxExtenderPriority 10
RETRY_INTERVAL_S = 0.5


def _requested_milli(pod: dict[str, Any]) -> int:
    """What kube-scheduler's NodeResourcesFit counts: max(sum of containers, largest init container)."""
    spec = pod.get("spec") or {}

    def milli(container: dict[str, Any]) -> int:
        resources = container.get("resources") or {}
        value = (resources.get("requests") or {}).get(contract.RESOURCE_VGPU_MILLI)
        if value is None:
            value = (resources.get("limits") or {}).get(contract.RESOURCE_VGPU_MILLI)
        try:
            return quantity_to_int(value) if value is not None else 0
        except QuantityError:
            return 0

    regular = sum(milli(c) for c in spec.get("containers") or [])
    init = max((milli(c) for c in spec.get("initContainers") or []), default=0)
    return max(regular, init)


class SchedulerLoop:
    """Schedules the stand-in's Pending pods whose schedulerName is ours, until `stop()`."""

    def __init__(self, extender_url: str, api_client: Any, state: DemoState,
                 on_bound: Callable[[dict[str, Any], str], None], rng: random.Random | None = None) -> None:
        self._url = extender_url
        self._core = client.CoreV1Api(api_client)
        self._state = state
        self._on_bound = on_bound
        self._rng = rng or random.Random(0)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scheduler-loop", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> SchedulerLoop:
        self._thread.start()
        return self

    def wake(self) -> None:
        """Something changed (a pod arrived or finished): try the queue now."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(10.0)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._wake.clear()
                self.schedule_pass()
                self._wake.wait(RETRY_INTERVAL_S)
        except BaseException as error:  # surfaced by the orchestrator as a failed step
            self.error = error

    def _list(self, **kwargs: Any) -> list[dict[str, Any]]:
        response = self._core.list_pod_for_all_namespaces(_preload_content=False, **kwargs)
        return json.loads(response.data).get("items") or []

    def schedule_pass(self) -> None:
        """One pass over the queue, oldest pod first (kube-scheduler's default queue sort)."""
        pods = self._list(field_selector=f"spec.schedulerName={SCHEDULER_NAME},spec.nodeName=,status.phase=Pending")
        pods.sort(key=lambda pod: (pod["metadata"].get("creationTimestamp") or "", pod["metadata"]["name"]))
        for pod in pods:
            if self._stop.is_set():
                return
            self.schedule_one(pod)

    def _node_fit(self, pod: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
        """The in-tree filter that runs before any extender: enough allocatable tensor.ai/vgpu-milli."""
        nodes = json.loads(self._core.list_node(_preload_content=False).data).get("items") or []
        bound = self._list(field_selector="status.phase!=Succeeded,status.phase!=Failed")
        requested: dict[str, int] = {}
        for other in bound:
            node_name = (other.get("spec") or {}).get("nodeName")
            if node_name:
                requested[node_name] = requested.get(node_name, 0) + _requested_milli(other)
        need = _requested_milli(pod)
        names, failed = [], {}
        for node in nodes:
            name = node["metadata"]["name"]
            if (node.get("spec") or {}).get("unschedulable"):
                failed[name] = "node is unschedulable"
                continue
            allocatable = ((node.get("status") or {}).get("allocatable") or {}).get(contract.RESOURCE_VGPU_MILLI, "0")
            try:
                free = quantity_to_int(allocatable) - requested.get(name, 0)
            except QuantityError:
                free = 0
            if need > free:
                failed[name] = f"Insufficient {contract.RESOURCE_VGPU_MILLI}"
            else:
                names.append(name)
        return sorted(names), failed

    def schedule_one(self, pod: dict[str, Any]) -> None:
        metadata = pod["metadata"]
        key = f"{metadata.get('namespace', 'default')}/{metadata['name']}"
        state = self._state
        with state.lock:
            run = state.pods.get(key)
            if run is None or run.phase not in (PENDING, WAITING_QUOTA, UNSCHEDULABLE):
                return
            run.schedule_attempts += 1
        names, failed = self._node_fit(pod)
        if not names:
            self._unschedulable(key, "; ".join(f"{n}: {r}" for n, r in sorted(failed.items())), quota=False)
            return
        args = {"Pod": pod, "Nodes": None, "NodeNames": names}
        status, result = post_json(self._url, "/filter", args)
        if status != 200 or not isinstance(result, dict) or result.get("Error"):
            self._unschedulable(key, f"filter failed: HTTP {status} {str(result)[:200]}", quota=False)
            return
        kept = result.get("NodeNames") or []
        if not kept:
            reasons = {**(result.get("FailedNodes") or {}), **(result.get("FailedAndUnresolvableNodes") or {})}
            text = "; ".join(f"{node}: {why}" for node, why in sorted(reasons.items()))
            self._unschedulable(key, text, quota="GPUQuota" in text)
            return
        unknown = set(kept) - set(names)
        if unknown:
            self._unschedulable(key, f"extender claims nodes not in the input list: {sorted(unknown)}", quota=False)
            return
        status, scores = post_json(self._url, "/prioritize", {"Pod": pod, "Nodes": None, "NodeNames": kept})
        totals = dict.fromkeys(kept, 0)
        if status == 200 and isinstance(scores, list):  # a prioritize error is ignored, as in kube-scheduler
            for entry in scores:
                if isinstance(entry, dict) and entry.get("Host") in totals and isinstance(entry.get("Score"), int):
                    totals[entry["Host"]] += entry["Score"] * EXTENDER_WEIGHT * MAX_NODE_SCORE_PER_EXTENDER_PRIORITY
        best = max(totals.values())
        node = self._rng.choice(sorted(name for name, total in totals.items() if total == best))
        binding = {"PodName": metadata["name"], "PodNamespace": metadata.get("namespace", "default"),
                   "PodUID": metadata.get("uid", ""), "Node": node}
        status, answer = post_json(self._url, "/bind", binding)
        if status != 200 or not isinstance(answer, dict) or answer.get("Error"):
            self._unschedulable(key, f"bind to {node} failed: {answer}", quota=False)
            return
        with state.lock:
            run.phase = BOUND
            run.node = node
            run.bound_s = state.now()
            run.reason = ""
        waited = f" after waiting {run.wait_s:.1f} s" if run.waited_for_quota and run.wait_s is not None else ""
        scored = ", ".join(f"{name}={total}" for name, total in sorted(totals.items()))
        state.log(f"{key} bound to {node}{waited} (scores {scored})", "ok")
        self._on_bound(pod, node)

    def _unschedulable(self, key: str, reason: str, *, quota: bool) -> None:
        state = self._state
        with state.lock:
            run = state.pods[key]
            first = run.first_wait_s is None
            changed = run.reason != reason
            if first:
                run.first_wait_s = state.now()
            run.phase = WAITING_QUOTA if quota else UNSCHEDULABLE
            run.waited_for_quota = run.waited_for_quota or quota
            run.reason = reason
        if first or changed:
            state.log(f"{key} {'waits for GPU quota' if quota else 'is unschedulable'}: {reason}",
                      "wait" if quota else "fail")
