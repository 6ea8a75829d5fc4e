"""Every workload kind the webhook rewrites, made into pods by the real kube-controller-manager.

A user writes `tensor.ai/vgpu: "0.25"` in a Deployment's, ReplicaSet's, StatefulSet's, DaemonSet's,
Job's or CronJob's pod template. The API server would refuse that fraction, so each test first holds
the *stored* template to the webhook's rewrite (`tensor.ai/vgpu-milli`, the `tensor.ai/vgpu-requested`
record, schedulerName), then follows the pods the controller creates from it: scheduled by the
tensor.ai scheduler, bound with an Assignment, and running with exactly the env of that Assignment.
The Deployment test also edits the request with `kubectl apply` (0.25 -> 0.5 -> none) and checks
that the stored template follows without stale keys.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from tensorai.proto import contract

from .pods import NAMESPACE, Placement, PodClient, assignment_of, container, env_from_log

SCHEDULER_NAME = "tensorai-scheduler"
GPU_NODE_LABEL = "tensor.ai/gpu-node"
POD_TIMEOUT_S = 90.0


# ---- manifests -------------------------------------------------------------------------------
def pod_template(app: str, vgpu: str | None, *, seconds: float = 3600, restart: str = "Always",
                 gpu_node_only: bool = False) -> dict[str, Any]:
    """The Pod template of a workload: one busybox container printing its env, asking for `vgpu` GPUs."""
    spec: dict[str, Any] = {
        "hostNetwork": True, "restartPolicy": restart, "terminationGracePeriodSeconds": 0,
        "containers": [container("main", vgpu, seconds)],
        "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists"}],
    }
    if gpu_node_only:
        spec["nodeSelector"] = {GPU_NODE_LABEL: "true"}
        spec["tolerations"].append({"operator": "Exists"})  # whatever else the GPU node is tainted with
    return {"metadata": {"labels": {"app": app}}, "spec": spec}


def workload(kind: str, name: str, vgpu: str | None = "0.25") -> dict[str, Any]:
    meta = {"name": name, "namespace": NAMESPACE, "labels": {"e2e": "workloads"}}
    selector = {"matchLabels": {"app": name}}
    if kind == "Deployment":
        spec: dict[str, Any] = {"replicas": 1, "selector": selector, "template": pod_template(name, vgpu)}
        return {"apiVersion": "apps/v1", "kind": kind, "metadata": meta, "spec": spec}
    if kind == "ReplicaSet":
        spec = {"replicas": 2, "selector": selector, "template": pod_template(name, vgpu)}
        return {"apiVersion": "apps/v1", "kind": kind, "metadata": meta, "spec": spec}
    if kind == "StatefulSet":
        spec = {"replicas": 2, "selector": selector, "serviceName": name, "podManagementPolicy": "Parallel",
                "template": pod_template(name, vgpu)}
        return {"apiVersion": "apps/v1", "kind": kind, "metadata": meta, "spec": spec}
    if kind == "DaemonSet":
        spec = {"selector": selector, "template": pod_template(name, vgpu, gpu_node_only=True)}
        return {"apiVersion": "apps/v1", "kind": kind, "metadata": meta, "spec": spec}
    if kind == "Job":
        spec = {"completions": 2, "parallelism": 2, "backoffLimit": 0,
                "template": pod_template(name, vgpu, seconds=1, restart="Never")}
        return {"apiVersion": "batch/v1", "kind": kind, "metadata": meta, "spec": spec}
    if kind == "CronJob":
        # A schedule that never comes during a test: its Job is made by hand (`kubectl create job --from`).
        job = {"backoffLimit": 0, "template": pod_template(name, vgpu, seconds=1, restart="Never")}
        spec = {"schedule": "0 0 1 1 *", "suspend": True, "jobTemplate": {"spec": job}}
        return {"apiVersion": "batch/v1", "kind": kind, "metadata": meta, "spec": spec}
    raise ValueError(f"no manifest for kind {kind!r}")


TEMPLATE_PATHS = {"CronJob": ("spec", "jobTemplate", "spec", "template")}
PLURALS = {"Deployment": "deployments", "ReplicaSet": "replicasets", "StatefulSet": "statefulsets",
           "DaemonSet": "daemonsets", "Job": "jobs", "CronJob": "cronjobs"}


def template_of(obj: dict[str, Any]) -> dict[str, Any]:
    node = obj
    for key in TEMPLATE_PATHS.get(obj["kind"], ("spec", "template")):
        node = node[key]
    return node


# ---- reading the cluster ---------------------------------------------------------------------
def read(e2e: Any, kind: str, name: str) -> dict[str, Any]:
    obj = json.loads(e2e.cluster.kubectl("get", PLURALS[kind], name, "-n", NAMESPACE, "-o", "json"))
    obj.setdefault("kind", kind)
    return obj


def delete_workload(e2e: Any, kind: str, name: str) -> None:
    e2e.cluster.kubectl("delete", PLURALS[kind], name, "-n", NAMESPACE, "--ignore-not-found", "--wait=false",
                        "--cascade=background")


@pytest.fixture
def workloads(e2e: Any, pods: PodClient) -> Iterator[list[tuple[str, str]]]:
    """(kind, name) of what a test created: deleted afterwards (before `pods` empties the namespace)."""
    created: list[tuple[str, str]] = []
    yield created
    for kind, name in created:
        delete_workload(e2e, kind, name)


def create(e2e: Any, workloads: list[tuple[str, str]], manifest: dict[str, Any]) -> dict[str, Any]:
    workloads.append((manifest["kind"], manifest["metadata"]["name"]))
    e2e.cluster.kubectl("create", "-f", "-", stdin=json.dumps(manifest))
    return read(e2e, manifest["kind"], manifest["metadata"]["name"])


def assert_template_rewritten(obj: dict[str, Any], milli: int, gpus: str) -> None:
    """The stored template asks for `milli` through vgpu-milli only, records `gpus`, and names our scheduler."""
    template = template_of(obj)
    where = f"{obj['kind']} {obj['metadata']['name']}"
    resources = template["spec"]["containers"][0].get("resources") or {}
    for section in ("limits", "requests"):
        entries = resources.get(section) or {}
        assert contract.RESOURCE_VGPU not in entries, f"{where}: stale {contract.RESOURCE_VGPU} in {section}"
        assert entries.get(contract.RESOURCE_VGPU_MILLI) == str(milli), f"{where}: {section} = {entries}"
    annotations = (template.get("metadata") or {}).get("annotations") or {}
    assert json.loads(annotations[contract.ANNOTATION_VGPU_REQUESTED]) == {"containers": {"main": gpus}}, where
    assert template["spec"].get("schedulerName") == SCHEDULER_NAME, where


def pods_of(pods: PodClient, app: str, count: int, phases: tuple[str, ...] = ("Running",),
            timeout_s: float = POD_TIMEOUT_S, milli: int | None = None) -> list[dict[str, Any]]:
    """`count` live pods of `app` in one of `phases` (and asking for `milli`, when given)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = [p for p in pods.list(f"app={app}") if (p.get("status") or {}).get("phase") in phases
                 and not p["metadata"].get("deletionTimestamp")
                 and (milli is None or _pod_milli(p) == milli)]
        if len(found) >= count:
            return found[:count]
        if time.monotonic() > deadline:
            states = {p["metadata"]["name"]: (p.get("status") or {}).get("phase") for p in pods.list(f"app={app}")}
            events = {name: pods.events_for(name)[-3:] for name in states}
            raise AssertionError(f"{app}: {len(found)} of {count} pod(s) in {phases} after {timeout_s:.0f} s: "
                                 f"{states}; events {events}")
        time.sleep(0.3)


def _pod_milli(pod: dict[str, Any]) -> int:
    """The milli-GPU the pod's main container asks for (0: none)."""
    limits = (pod["spec"]["containers"][0].get("resources") or {}).get("limits") or {}
    return int(limits.get(contract.RESOURCE_VGPU_MILLI, 0))


def printed_env(e2e: Any, pod: dict[str, Any], timeout_s: float = 30.0) -> dict[str, str]:
    """The GPU env the pod's main container printed (waits for the log line to land)."""
    meta = pod["metadata"]
    deadline = time.monotonic() + timeout_s
    while True:
        env = env_from_log(e2e.cluster.container_log(meta["namespace"], meta["name"], meta["uid"], "main"))
        if "NVIDIA_VISIBLE_DEVICES" in env or time.monotonic() > deadline:
            return env
        time.sleep(0.2)


def assert_runs_with_its_assignment(e2e: Any, pod: dict[str, Any], milli: int) -> None:
    name = pod["metadata"]["name"]
    assert pod["spec"]["schedulerName"] == SCHEDULER_NAME, name
    assert pod["spec"].get("nodeName") == e2e.cluster.node_name, name
    assert _pod_milli(pod) == milli, f"{name}: {pod['spec']['containers'][0].get('resources')}"
    assignment = assignment_of(pod)
    assert assignment, f"{name} bound without a {contract.ANNOTATION_ASSIGNMENT} annotation"
    assert assignment["main"].milli == milli, f"{name}: {assignment}"
    ran = Placement.from_env(printed_env(e2e, pod))
    assert ran == assignment["main"], f"{name} ran on {ran}, its Assignment says {assignment['main']}"


# ---- the tests ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["ReplicaSet", "StatefulSet", "DaemonSet"])
def test_controller_pods_of_a_rewritten_template_run_with_their_assignment(
        e2e: Any, pods: PodClient, workloads: list[tuple[str, str]], kind: str) -> None:
    name = f"wl-{kind.lower()}"
    obj = create(e2e, workloads, workload(kind, name, "0.25"))
    assert_template_rewritten(obj, 250, "0.25")
    count = 1 if kind == "DaemonSet" else 2
    running = pods_of(pods, name, count)
    for pod in running:
        assert_runs_with_its_assignment(e2e, pod, 250)
    if count > 1:
        assert len({p["metadata"]["uid"] for p in running}) == count


def test_job_pods_run_with_their_assignment_and_complete(e2e: Any, pods: PodClient,
                                                        workloads: list[tuple[str, str]]) -> None:
    obj = create(e2e, workloads, workload("Job", "wl-job", "0.25"))
    assert_template_rewritten(obj, 250, "0.25")
    finished = pods_of(pods, "wl-job", 2, phases=("Succeeded", "Failed"))
    for pod in finished:
        assert pod["status"]["phase"] == "Succeeded", pods.events_for(pod["metadata"]["name"])
        assert_runs_with_its_assignment(e2e, pod, 250)
    deadline = time.monotonic() + 30
    while read(e2e, "Job", "wl-job").get("status", {}).get("succeeded") != 2:
        assert time.monotonic() < deadline, f"Job wl-job never counted 2 successes: {read(e2e, 'Job', 'wl-job')}"
        time.sleep(0.3)


def test_cronjob_job_template_is_rewritten_and_its_job_runs(e2e: Any, pods: PodClient,
                                                           workloads: list[tuple[str, str]]) -> None:
    cronjob = create(e2e, workloads, workload("CronJob", "wl-cron", "0.5"))
    assert_template_rewritten(cronjob, 500, "0.5")
    # What the CronJob controller does at its schedule: a Job from the stored jobTemplate.
    workloads.append(("Job", "wl-cron-manual"))
    e2e.cluster.kubectl("create", "job", "wl-cron-manual", "--from=cronjob/wl-cron", "-n", NAMESPACE)
    job = read(e2e, "Job", "wl-cron-manual")
    assert_template_rewritten(job, 500, "0.5")
    pod = pods_of(pods, "wl-cron", 1, phases=("Succeeded", "Failed"))[0]
    assert pod["status"]["phase"] == "Succeeded", pods.events_for(pod["metadata"]["name"])
    assert_runs_with_its_assignment(e2e, pod, 500)


def _apply_deployment(e2e: Any, vgpu: str | None) -> dict[str, Any]:
    e2e.cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(workload("Deployment", "wl-deploy", vgpu)))
    return read(e2e, "Deployment", "wl-deploy")


def test_deployment_pods_follow_every_edit_of_the_request(e2e: Any, pods: PodClient,
                                                         workloads: list[tuple[str, str]]) -> None:
    workloads.append(("Deployment", "wl-deploy"))
    deployment = _apply_deployment(e2e, "0.25")
    assert_template_rewritten(deployment, 250, "0.25")
    assert_runs_with_its_assignment(e2e, pods_of(pods, "wl-deploy", 1, milli=250)[0], 250)

    # The user edits the manifest: the stored 250 must become 500, with no tensor.ai/vgpu left behind.
    deployment = _apply_deployment(e2e, "0.5")
    assert_template_rewritten(deployment, 500, "0.5")
    assert_runs_with_its_assignment(e2e, pods_of(pods, "wl-deploy", 1, milli=500)[0], 500)

    # The user drops the request: the stored milli and the record go with it.
    deployment = _apply_deployment(e2e, None)
    template = template_of(deployment)
    resources = template["spec"]["containers"][0].get("resources") or {}
    for section in ("limits", "requests"):
        left = {k for k in (resources.get(section) or {}) if k.startswith("tensor.ai/")}
        assert not left, f"removing tensor.ai/vgpu left {left} in the stored template's {section}"
    assert contract.ANNOTATION_VGPU_REQUESTED not in ((template.get("metadata") or {}).get("annotations") or {})
    pod = pods_of(pods, "wl-deploy", 1, milli=0)[0]
    assert not assignment_of(pod), "a pod without a GPU request got an Assignment"


def test_the_api_server_refuses_a_fraction_the_webhook_did_not_rewrite(e2e: Any) -> None:
    """The reason the webhook exists, and the proof that the templates above were rewritten by it:
    a ReplicaSet naming tensor.ai/vgpu-milli as a fraction is refused by validation itself."""
    manifest = workload("ReplicaSet", "wl-raw-fraction", None)
    manifest["spec"]["template"]["spec"]["containers"][0]["resources"] = {
        "limits": {contract.RESOURCE_VGPU_MILLI: "0.5"}}
    apps = client.AppsV1Api(e2e.api)
    with pytest.raises(ApiException) as refused:
        apps.create_namespaced_replica_set(NAMESPACE, manifest, dry_run="All")
    assert refused.value.status == 422, refused.value.body
    assert contract.RESOURCE_VGPU_MILLI in refused.value.body
