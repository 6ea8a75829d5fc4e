"""Who writes GPUQuota status, on the real kube-apiserver behind the real kube-scheduler (docs/extender.md,
"Two replicas: who writes what").

The harness's kube-scheduler runs with the shipped leader election (Lease tensorai-system/tensorai-scheduler)
on this host, and its extender is this host's process: the extender must find itself the leader from the
identity kube-scheduler really writes (`<hostname>_<uuid>`), read the Lease under the shipped RBAC (list and
watch by name), and write conditions the CRD's schema keeps. A second extender in its own UTS namespace
(another hostname, as the standby pod has) must leave the leader's `waitingPods` alone while its
kube-scheduler never calls it. Control plane only (`LocalCluster(with_node=False)`): the GPU node is an
API object with an inventory, enough for kube-scheduler to call filter.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from test_extender_support import node as gpu_node

from tensorai.demo.processes import module_command
from tensorai.proto import contract

from .own_control_plane import skip_unless_own_control_plane
from .pods import gpu_pod

NAMESPACE = "e2e"
QUOTA = "leader-e2e"
NODE = "leader-e2e-gpu"
STANDBY_HOSTNAME = "standby-e2e"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    skip_unless_own_control_plane("the extender must run on the kube-scheduler's host")
    from .cluster import LocalCluster

    local = LocalCluster(tmp_path_factory.mktemp("leader"), with_node=False).start()
    try:
        yield local
    finally:
        local.stop()


def _get(cluster: Any, *args: str) -> dict[str, Any]:
    return json.loads(cluster.kubectl("get", *args, "-o", "json"))


def _quota_status(cluster: Any) -> dict[str, Any]:
    return _get(cluster, "gpuquotas.tensor.ai", QUOTA, "-n", NAMESPACE).get("status") or {}


def _conditions(cluster: Any) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in _quota_status(cluster).get("conditions") or []}


def _wait(what: str, predicate: Any, timeout_s: float, interval_s: float = 0.1) -> Any:
    from .cluster import wait_until

    return wait_until(what, predicate, timeout_s, interval_s)


def test_extender_leads_by_the_lease_kube_scheduler_holds_and_writes_conditions_the_crd_keeps(cluster: Any) -> None:
    lease = _wait("kube-scheduler to take its Lease", lambda: (
        _get(cluster, "lease", "tensorai-scheduler", "-n", "tensorai-system")["spec"].get("holderIdentity")
        and _get(cluster, "lease", "tensorai-scheduler", "-n", "tensorai-system")), 60, 0.5)
    holder = lease["spec"]["holderIdentity"]
    assert holder.startswith(f"{socket.gethostname()}_"), f"kube-scheduler's identity is {holder!r}"
    cluster.kubectl("create", "-f", "-", stdin=json.dumps({
        "apiVersion": f"{contract.QUOTA_GROUP}/{contract.QUOTA_VERSION}", "kind": contract.QUOTA_KIND,
        "metadata": {"name": QUOTA, "namespace": NAMESPACE}, "spec": {"hard": {"gpus": "0.25"}}}))  # generation 1
    ready = _wait("the leading extender to write Ready", lambda: _conditions(cluster).get("Ready"), 15)
    assert (ready["status"], ready["reason"], ready["observedGeneration"]) == ("True", "Enforced", 1)
    assert _quota_status(cluster)["observedGeneration"] == 1
    assert _conditions(cluster)["QuotaExceeded"]["status"] == "False"
    cluster.kubectl("patch", "gpuquotas.tensor.ai", QUOTA, "-n", NAMESPACE, "--type=merge",
                    "-p", json.dumps({"spec": {"hard": {"gpus": "0.5"}}}))
    _wait("observedGeneration 2", lambda: _quota_status(cluster).get("observedGeneration") == 2, 15)
    after = _conditions(cluster)["Ready"]
    assert after["observedGeneration"] == 2 and after["lastTransitionTime"] == ready["lastTransitionTime"]


def test_a_standby_extender_leaves_the_leaders_waiting_pods_alone(cluster: Any) -> None:
    # the standby pod's extender: same ServiceAccount, another hostname, a fast safety net that would
    # overwrite the leader's status every 0.2 s if it wrote
    standby = cluster._start("extender-standby", [
        "unshare", "--uts", "sh", "-c", f'hostname {STANDBY_HOSTNAME} && exec "$@"', "sh",
        *module_command("tensorai.scheduler.cli", "--address=127.0.0.1", "--port=0", "--metrics-port=0",
                        f"--kubeconfig={cluster.kubeconfig('tensorai-scheduler')}", "--requeue-interval-seconds=0.2",
                        "--log-level=DEBUG")])
    try:
        standby.wait_for_line(r"serving on http://", 60)
        node = gpu_node(NODE, 1)
        node["metadata"]["labels"]["kubernetes.io/hostname"] = NODE
        cluster.kubectl("create", "-f", "-", stdin=json.dumps(node))
        if not _get(cluster, "node", NODE).get("status", {}).get("allocatable"):
            cluster.kubectl("patch", "node", NODE, "--subresource=status", "--type=merge",
                            "-p", json.dumps({"status": node["status"]}))
        _wait("the Ready condition", lambda: _conditions(cluster).get("Ready"), 15)
        # the quota is 0.5 GPU (the test above): the first pod binds and holds it (no kubelet runs it)
        cluster.kubectl("create", "-f", "-", stdin=json.dumps(gpu_pod("leader-e2e-within", "0.5", seconds=1)))
        _wait("the first pod to bind", lambda: _get(cluster, "pod", "leader-e2e-within", "-n", NAMESPACE)[
            "spec"].get("nodeName") == NODE, 60, 0.2)
        cluster.kubectl("create", "-f", "-", stdin=json.dumps(gpu_pod("leader-e2e-over", "0.25", seconds=1)))
        _wait("the leader to count the waiting pod", lambda: _quota_status(cluster).get("waitingPods") == 1, 60, 0.2)
        exceeded = _conditions(cluster)["QuotaExceeded"]
        assert (exceeded["status"], exceeded["reason"]) == ("True", "PodsWaiting")
        assert "leader-e2e-over: gpus used 0.5 + 0.25 > hard 0.5" in exceeded["message"], exceeded
        samples = []
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            samples.append(_quota_status(cluster).get("waitingPods"))
            time.sleep(0.2)
        assert set(samples) == {1}, f"the standby overwrote waitingPods: {samples}"
    finally:
        standby.stop()
        cluster.kubectl("delete", "pod", "leader-e2e-within", "leader-e2e-over", "-n", NAMESPACE, "--ignore-not-found",
                        "--wait=false", "--grace-period=0", "--force", check=False)
        cluster.kubectl("delete", "node", NODE, "--ignore-not-found", check=False)
    assert "leading, writing quota status" not in cluster.log_of("extender-standby").read_text()
    assert "leading, writing quota status" in cluster.log_of("extender").read_text()
