"""What the cluster does when a part fails or a limit binds, on the real control plane and kubelet.

- the webhook is down: unrelated pods are untouched (matchConditions), vGPU objects are refused
  with the webhook's name in the error (failurePolicy Fail), and nothing reaches the API unrewritten;
- the Node object is deleted under a running GPU pod and pending ones: the extender stops offering
  it (no bind to a ghost node) and, once kubelet has registered it again, GPU pods bind again;
- a GPUQuota holds a pod Pending with its reason, and the pod binds promptly when quota frees;
- a high-priority GPU pod on a full node preempts through kube-scheduler's preempt verb, which
  calls the extender's /preempt, and then runs with the env of its Assignment.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tensorai.proto import contract

from .pods import NAMESPACE, Placement, PodClient, assignment_of, env_from_log, gpu_pod

SCHEDULER_NAME = "tensorai-scheduler"
SIM_GPU_COUNT = 8  # cluster.SIM_GPUS


def wait_for(what: str, predicate: Callable[[], Any], timeout_s: float, interval_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


def running_with_its_assignment(e2e: Any, pods: PodClient, name: str, milli: int, timeout_s: float = 90) -> None:
    pod = pods.wait_phase([name], ("Running", "Succeeded", "Failed"), timeout_s=timeout_s)[name]
    assert pod["status"]["phase"] != "Failed", pods.events_for(name)
    assert pod["spec"]["schedulerName"] == SCHEDULER_NAME
    assignment = assignment_of(pod)
    assert assignment and assignment["main"].milli == milli, f"{name}: {assignment}"
    meta = pod["metadata"]

    def printed() -> Placement | None:
        env = env_from_log(e2e.cluster.container_log(meta["namespace"], name, meta["uid"], "main"))
        return Placement.from_env(env)

    ran = wait_for(f"{name} to print its env", printed, 30, 0.2)
    assert ran == assignment["main"], f"{name} ran on {ran}, its Assignment says {assignment['main']}"


def extender_metrics(e2e: Any) -> str:
    url = f"http://127.0.0.1:{e2e.cluster.ports['extender-metrics']}/metrics"  # its own listener
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def metric_value(text: str, name: str, labels: str = "") -> float:
    pattern = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", re.MULTILINE)
    return sum(float(m[2]) for m in pattern.finditer(text) if labels in (m[1] or ""))


def extender_filter(e2e: Any, pod: dict[str, Any], node_names: list[str]) -> dict[str, Any]:
    """POST /filter as kube-scheduler does with nodeCacheCapable (only node names)."""
    body = json.dumps({"Pod": pod, "NodeNames": node_names}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{e2e.cluster.ports['extender']}/filter", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def bound(pods: PodClient, name: str) -> bool:
    pod = pods.get(name)
    return bool(pod and pod["spec"].get("nodeName"))


def pending_reason(pods: PodClient, name: str, needle: str, timeout_s: float = 30) -> str:
    """The first event of `name` that names `needle` (asserting the pod is still unbound)."""
    def found() -> str | None:
        return next((e for e in pods.events_for(name) if needle in e), None)

    try:
        event = wait_for(f"an event of {name} naming {needle!r}", found, timeout_s, 0.3)
    except AssertionError as error:
        raise AssertionError(f"{error}; events: {pods.events_for(name)}") from None
    assert not bound(pods, name), f"{name} bound although {event}"
    return event


# ---- 1. the webhook is down ----------------------------------------------------------------------
def _vgpu_pod_admitted(pods: PodClient) -> bool:
    """A dry-run create of a vGPU pod passes the webhook (sideEffects None: it is called on dry runs)."""
    try:
        pods.core.create_namespaced_pod(NAMESPACE, gpu_pod("probe", "0.25"), dry_run="All")
    except ApiException:
        return False
    return True


def test_webhook_down_refuses_only_vgpu_objects(e2e: Any, pods: PodClient) -> None:
    e2e.require_local("stopping the webhook")
    apps = client.AppsV1Api(e2e.api)
    e2e.cluster.named["webhook"].stop()
    try:
        plain = pods.create(gpu_pod("no-gpu-while-down", None, seconds=0.5))
        assert plain["spec"]["schedulerName"] == "default-scheduler"
        done = pods.wait_phase(["no-gpu-while-down"], timeout_s=60)["no-gpu-while-down"]
        assert done["status"]["phase"] == "Succeeded", pods.events_for("no-gpu-while-down")
        assert done["spec"]["nodeName"] == e2e.cluster.node_name

        with pytest.raises(ApiException) as refused:
            pods.create(gpu_pod("gpu-while-down", "0.25"))
        message = json.loads(refused.value.body)["message"]
        assert refused.value.status == 500, message
        assert 'failed calling webhook "vgpu.tensor.ai"' in message, message
        assert pods.get("gpu-while-down") is None

        # The same for a workload template; an unrelated Deployment is admitted.
        template = {"metadata": {"labels": {"app": "down"}}, "spec": gpu_pod("x", "0.25")["spec"]}
        template["spec"]["restartPolicy"] = "Always"
        deployment = {"apiVersion": "apps/v1", "kind": "Deployment",
                      "metadata": {"name": "down", "namespace": NAMESPACE},
                      "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "down"}}, "template": template}}
        with pytest.raises(ApiException) as refused:
            apps.create_namespaced_deployment(NAMESPACE, deployment, dry_run="All")
        assert 'failed calling webhook "vgpu.tensor.ai"' in json.loads(refused.value.body)["message"]
        template["spec"]["containers"][0]["resources"] = {}
        apps.create_namespaced_deployment(NAMESPACE, deployment, dry_run="All")
    finally:
        e2e.cluster.start_webhook()
    # Back: the new process patched its own CA in; vGPU pods are admitted again.
    wait_for("the restarted webhook to admit vGPU pods", lambda: _vgpu_pod_admitted(pods), 30, 0.3)
    pods.create(gpu_pod("gpu-after-restart", "0.25", seconds=0.5))
    running_with_its_assignment(e2e, pods, "gpu-after-restart", 250)


# ---- 2. the Node object is deleted ---------------------------------------------------------------
def _node_back(e2e: Any, timeout_s: float) -> str:
    """Wait for kubelet to register the Node again (restart kubelet if it does not on its own), then
    label and un-taint it as the harness does at start. Returns how it came back."""
    cluster = e2e.cluster
    node_exists = lambda: cluster.kubectl("get", "node", cluster.node_name, "--ignore-not-found", "-o", "name")  # noqa: E731
    try:
        wait_for("kubelet to register the node again", node_exists, timeout_s, 0.5)
        how = "kubelet re-registered on its own"
    except AssertionError:
        # kubelet registers only once per process (kubernetes #71398): a restart registers it again.
        cluster.stop_kubelet()
        cluster.start_kubelet()
        how = "kubelet registered after a restart"
    cluster._prepare_node()
    if cluster.with_node:  # a new Node object: the plugin's Node-bound token died with the old one
        cluster.renew_device_plugin()
    return how


def test_deleted_node_gets_no_pods_until_it_registers_again(e2e: Any, pods: PodClient) -> None:
    e2e.require_local("deleting and re-registering the node")
    cluster = e2e.cluster
    pods.create(gpu_pod("runs-through", "0.5", seconds=3600))
    running_with_its_assignment(e2e, pods, "runs-through", 500)
    before = pods.get("runs-through")

    cluster.kubectl("delete", "node", cluster.node_name, "--wait=true")
    started = time.monotonic()
    try:
        pods.create(gpu_pod("after-delete", "0.25", seconds=0.5))
        event = pending_reason(pods, "after-delete", "FailedScheduling")
        print(f"\npending while the node is gone: {event}")
        # A scheduler whose cache still held the node would ask the extender about it: the view dropped it.
        def ghost_refused() -> dict[str, Any] | None:
            answer = extender_filter(e2e, pods.get("after-delete"), [cluster.node_name])
            return answer if cluster.node_name in (answer.get("FailedAndUnresolvableNodes") or {}) else None

        answer = wait_for("the extender to refuse the deleted node", ghost_refused, 10, 0.2)
        assert not answer.get("NodeNames"), answer
        print(f"extender on the deleted node: {answer['FailedAndUnresolvableNodes'][cluster.node_name]}")
        time.sleep(2)  # a few scheduling attempts: none may bind to the ghost
        assert not bound(pods, "after-delete"), pods.get("after-delete")
    finally:
        how = _node_back(e2e, 12)
    print(f"node back after {time.monotonic() - started:.1f} s: {how}")
    # Kubelet re-advertises the plugin's resources, the plugin re-publishes its inventory, and the
    # pending pod binds.
    wait_for("the pending pod to bind on the re-registered node", lambda: bound(pods, "after-delete"), 60, 0.3)
    print(f"pending pod bound {time.monotonic() - started:.1f} s after the delete")
    done = pods.wait_phase(["after-delete"], timeout_s=60)["after-delete"]
    assert done["status"]["phase"] == "Succeeded", pods.events_for("after-delete")
    # The running pod kept its GPU: it was not evicted, and the extender counts it again.
    still = pods.get("runs-through")
    assert still and still["metadata"]["uid"] == before["metadata"]["uid"]
    assert still["status"]["phase"] == "Running"
    gpu = assignment_of(still)["main"].uuids[0]
    allocated = metric_value(extender_metrics(e2e), "tensorai_gpu_allocated_milli", f'gpu="{gpu}"')
    assert allocated >= 500, f"the extender no longer counts runs-through's 500 milli on {gpu}: {allocated}"


# ---- 3. quota: wait with the reason, requeue promptly ---------------------------------------------
@pytest.fixture
def gpu_quota(e2e: Any) -> Iterator[str]:
    name = "e2e-half-gpu"
    e2e.cluster.kubectl("apply", "-f", "-", stdin=json.dumps({
        "apiVersion": "tensor.ai/v1alpha1", "kind": contract.QUOTA_KIND,
        "metadata": {"name": name, "namespace": NAMESPACE}, "spec": {"hard": {"gpus": "0.5"}}}))
    yield name
    e2e.cluster.kubectl("delete", "gpuquotas.tensor.ai", name, "-n", NAMESPACE, "--ignore-not-found")


def test_pod_over_quota_waits_with_the_reason_and_binds_when_quota_frees(e2e: Any, pods: PodClient,
                                                                        gpu_quota: str) -> None:
    time.sleep(1)  # the extender's watch sees the new GPUQuota
    pods.create(gpu_pod("within-quota", "0.5", seconds=6))
    wait_for("within-quota to bind", lambda: bound(pods, "within-quota"), 60)
    pods.create(gpu_pod("over-quota", "0.25", seconds=0.5))
    event = pending_reason(pods, "over-quota", f"{contract.QUOTA_KIND} {NAMESPACE}/{gpu_quota}")
    print(f"\nover-quota waits: {event}")
    assert "gpus" in event and "0.5" in event, event

    # Polled tightly (not wait_phase's 0.3 s) so the requeue time starts when the API says it ended.
    # Each poll is one LIST: one consistent snapshot of both pods (two GETs would race the requeue,
    # which can bind over-quota within the 20 ms between them).
    def snapshot() -> dict[str, dict[str, Any]]:
        return {p["metadata"]["name"]: p for p in pods.list()}

    def within_ended() -> bool:
        both = snapshot()
        within = both["within-quota"]
        ended = within["status"].get("phase") in ("Succeeded", "Failed")
        assert ended or not both["over-quota"]["spec"].get("nodeName"), \
            "over-quota bound while within-quota still held the quota"
        return ended

    assert wait_for("within-quota to end", within_ended, 60, 0.02)
    freed_at = time.monotonic()
    assert snapshot()["within-quota"]["status"]["phase"] == "Succeeded", pods.events_for("within-quota")
    wait_for("over-quota to bind after within-quota ended", lambda: bound(pods, "over-quota"), 30, 0.05)
    requeue_s = time.monotonic() - freed_at
    print(f"requeue: over-quota bound {requeue_s:.2f} s after within-quota was seen Succeeded")
    pod = pods.get("over-quota")
    assert contract.ANNOTATION_QUOTA_REQUEUE in (pod["metadata"].get("annotations") or {}), \
        "bound without the extender's requeue (the scheduler's 5-minute flush would be the only way out)"
    assert requeue_s < 5.0, f"over-quota bound {requeue_s:.1f} s after quota freed"
    running_with_its_assignment(e2e, pods, "over-quota", 250)


# ---- 4. preemption through the extender ------------------------------------------------------------
@pytest.fixture
def high_priority(e2e: Any) -> Iterator[str]:
    name = "e2e-high"
    scheduling = client.SchedulingV1Api(e2e.api)
    scheduling.create_priority_class({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                                      "metadata": {"name": name}, "value": 100000})
    yield name
    scheduling.delete_priority_class(name)


def test_high_priority_gpu_pod_preempts_through_the_extender(e2e: Any, pods: PodClient,
                                                            high_priority: str) -> None:
    preempts_before = metric_value(extender_metrics(e2e), "tensorai_extender_request_seconds_count",
                                   'verb="preempt"')
    low = [f"low-{index}" for index in range(SIM_GPU_COUNT)]
    for name in low:
        pods.create(gpu_pod(name, "1", seconds=3600, labels={"e2e": "low"}))
    pods.wait_phase(low, ("Running",), timeout_s=120)
    whole = {assignment_of(pods.get(name))["main"].uuids for name in low}
    assert len(whole) == SIM_GPU_COUNT, f"the low pods do not hold every GPU once: {whole}"

    high = gpu_pod("high", "1", seconds=3600)
    high["spec"]["priorityClassName"] = high_priority
    started = time.monotonic()
    pods.create(high)
    running_with_its_assignment(e2e, pods, "high", 1000, timeout_s=90)
    print(f"\nhigh-priority pod running {time.monotonic() - started:.1f} s after creation")

    survivors = {p["metadata"]["name"] for p in pods.list("e2e=low") if not p["metadata"].get("deletionTimestamp")}
    victims = set(low) - survivors
    assert len(victims) == 1, f"preemption should evict exactly one whole-GPU pod, evicted {sorted(victims)}"
    events = [e for e in pods.events_for(next(iter(victims))) if "Preempted" in e]
    assert events, f"victim {victims} has no Preempted event: {pods.events_for(next(iter(victims)))}"
    preempts = metric_value(extender_metrics(e2e), "tensorai_extender_request_seconds_count", 'verb="preempt"')
    assert preempts > preempts_before, "kube-scheduler preempted without calling the extender's /preempt"
