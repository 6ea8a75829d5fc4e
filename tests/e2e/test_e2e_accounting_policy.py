"""Only tensor.ai's programs may write the scheduler's accounting on a pod, on the real kube-apiserver.

The install's ValidatingAdmissionPolicy (manifests/base/policies/accounting-annotations.yaml) is
applied as shipped to a control plane without a node (`LocalCluster(with_node=False)`: no kubelet, no
node lock). A tenant with the `edit` role in its namespace cannot add, change or remove
`tensor.ai/assignment` or `tensor.ai/allocated` on its own pods - not at CREATE, not by patch - and
can still edit every other annotation and label; the extender's and the device plugin's
ServiceAccounts can write them; a Binding that carries them is refused unless ours makes it; the
webhook's own annotation (`tensor.ai/vgpu-requested`, added during the tenant's CREATE) still passes;
a workload template that carries them gets no pods.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tensorai.proto import contract
from tensorai.proto.kubeclient import kube_api_client

from .binaries import KubectlError
from .own_control_plane import skip_unless_own_control_plane
from .pods import gpu_pod

TENANT_NAMESPACE = "e2e"  # LocalCluster binds the `edit` ClusterRole to the identity "tenant" there
PROTECTED = (contract.ANNOTATION_ASSIGNMENT, contract.ANNOTATION_ALLOCATED)
REFUSAL = "ValidatingAdmissionPolicy 'tensorai-accounting-annotations'"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    skip_unless_own_control_plane("the tenant and ServiceAccount tokens are made there")
    from .cluster import LocalCluster

    local = LocalCluster(tmp_path_factory.mktemp("accounting"), with_node=False).start()
    try:
        # the device plugin's node, as kubelet would register it: the plugin may only touch pods bound there
        local.kubectl("create", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "Node",
                                                            "metadata": {"name": local.node_name}}))
        yield local
    finally:
        local.stop()


def _pod(name: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """A pod nobody schedules (no such scheduler): it stays Pending, which is all these checks need."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": TENANT_NAMESPACE, "annotations": annotations or {}},
            "spec": {"schedulerName": "nobody", "containers": [{"name": "c", "image": "e2e/none"}]}}


def _create(cluster: Any, obj: dict[str, Any], who: str) -> None:
    cluster.kubectl("create", "-f", "-", who=who, stdin=json.dumps(obj))


def _refused(action: Any) -> str:
    with pytest.raises(KubectlError) as refused:
        action()
    message = str(refused.value)
    assert REFUSAL in message, message
    return message


def _annotations(cluster: Any, name: str) -> dict[str, str]:
    pod = json.loads(cluster.kubectl("get", "pod", name, "-n", TENANT_NAMESPACE, "-o", "json"))
    return pod["metadata"].get("annotations") or {}


def _annotate(cluster: Any, name: str, *changes: str, who: str) -> None:
    """`kubectl annotate`'s KEY=VALUE / KEY- as one merge patch, sent alone as our programs send it (the
    device plugin may not GET pods, which kubectl does first)."""
    annotations: dict[str, str | None] = {change[:-1]: None for change in changes if change.endswith("-")}
    annotations |= dict(change.split("=", 1) for change in changes if not change.endswith("-"))
    core = client.CoreV1Api(kube_api_client(cluster.kubeconfig(who)))
    try:
        core.patch_namespaced_pod(name, TENANT_NAMESPACE, {"metadata": {"annotations": annotations}},
                                  _content_type="application/merge-patch+json")
    except ApiException as error:
        raise KubectlError(f"patch of {name} as {who} failed: {error.status} {error.body}") from None


@pytest.mark.parametrize("key", PROTECTED)
def test_a_tenant_cannot_create_a_pod_that_carries_accounting(cluster: Any, key: str) -> None:
    name = f"forged-{key.rsplit('/', 1)[1]}"
    message = _refused(lambda: _create(cluster, _pod(name, {key: '{"nodeName": "gpu-0"}'}), "tenant"))
    assert key in message and "only its extender and device plugin" in message, message
    assert cluster.kubectl("get", "pod", name, "-n", TENANT_NAMESPACE, "--ignore-not-found") == ""


def _binding(name: str, node: str, annotations: dict[str, str] | None = None) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "Binding",
                       "metadata": {"name": name, "namespace": TENANT_NAMESPACE, "annotations": annotations or {}},
                       "target": {"apiVersion": "v1", "kind": "Node", "name": node}})


def _bind(cluster: Any, name: str, who: str, annotations: dict[str, str] | None = None) -> None:
    path = f"/api/v1/namespaces/{TENANT_NAMESPACE}/pods/{name}/binding"
    cluster.kubectl("create", "--raw", path, "-f", "-", who=who, stdin=_binding(name, cluster.node_name, annotations))


def test_a_tenant_cannot_add_change_or_remove_accounting_but_edits_everything_else(cluster: Any) -> None:
    _create(cluster, _pod("own"), "tenant")
    _refused(lambda: _annotate(cluster, "own", f"{contract.ANNOTATION_ASSIGNMENT}=forged", who="tenant"))
    # our programs write them: the extender's ServiceAccount the Assignment (in the Binding, as at bind),
    # the device plugin of the pod's node `allocated`, and an Assignment rewrite when it swaps two pods
    _bind(cluster, "own", "tensorai-scheduler", {contract.ANNOTATION_ASSIGNMENT: "by-the-extender"})
    _annotate(cluster, "own", f"{contract.ANNOTATION_ALLOCATED}=by-the-plugin", who="tensorai-device-plugin")
    _annotate(cluster, "own", f"{contract.ANNOTATION_ASSIGNMENT}=swapped-by-the-plugin", who="tensorai-device-plugin")
    for key in PROTECTED:
        _refused(lambda key=key: _annotate(cluster, "own", f"{key}=1-milli", who="tenant"))  # change
        _refused(lambda key=key: _annotate(cluster, "own", f"{key}-", who="tenant"))  # remove
    # a patch that leaves them as they are passes: every other annotation and label stays the tenant's
    _annotate(cluster, "own", "team/owner=alice", f"{contract.ANNOTATION_POLICY}=binpack", who="tenant")
    cluster.kubectl("label", "pod", "own", "-n", TENANT_NAMESPACE, "tier=batch", who="tenant")
    annotations = _annotations(cluster, "own")
    assert annotations[contract.ANNOTATION_ASSIGNMENT] == "swapped-by-the-plugin"
    assert annotations[contract.ANNOTATION_ALLOCATED] == "by-the-plugin"
    assert annotations["team/owner"] == "alice"
    # nobody else either: not even a cluster admin rewrites the accounting behind the extender's back
    _refused(lambda: _annotate(cluster, "own", f"{contract.ANNOTATION_ASSIGNMENT}=admin", who="admin"))


def test_a_binding_carries_accounting_only_when_the_extender_makes_it(cluster: Any) -> None:
    # tenants (the `edit` role) cannot create Bindings at all; the policy is the second line
    for resource in (("pods", "--subresource=binding"), ("bindings",)):
        assert cluster.kubectl("auth", "can-i", "create", *resource, "-n", TENANT_NAMESPACE, who="tenant",
                               check=False).strip() == "no", resource
    for name in ("bound-by-admin", "bound-plain", "bound-by-us"):
        _create(cluster, _pod(name), "admin")
    forged = {contract.ANNOTATION_ASSIGNMENT: "forged"}
    _refused(lambda: _bind(cluster, "bound-by-admin", "admin", forged))  # POST pods/NAME/binding
    _refused(lambda: cluster.kubectl("create", "-f", "-", who="admin",  # POST .../bindings
                                     stdin=_binding("bound-by-admin", cluster.node_name, forged)))
    # kube-scheduler's own Bindings carry no annotations and pass; the extender's carry the Assignment
    _bind(cluster, "bound-plain", "admin")
    _bind(cluster, "bound-by-us", "tensorai-scheduler", {contract.ANNOTATION_ASSIGNMENT: "by-the-extender"})
    assert _annotations(cluster, "bound-by-us")[contract.ANNOTATION_ASSIGNMENT] == "by-the-extender"
    assert contract.ANNOTATION_ASSIGNMENT not in _annotations(cluster, "bound-by-admin")


def test_the_webhooks_own_annotation_still_passes_a_tenants_create(cluster: Any) -> None:
    worker = gpu_pod("vgpu-worker", "0.5", namespace=TENANT_NAMESPACE)
    worker["spec"]["schedulerName"] = "nobody"
    _create(cluster, worker, "tenant")
    annotations = _annotations(cluster, "vgpu-worker")
    assert contract.ANNOTATION_VGPU_REQUESTED in annotations, annotations  # written by the webhook, not refused


def test_a_workload_template_cannot_smuggle_accounting_into_its_pods(cluster: Any) -> None:
    """The controller that creates the pods is not one of our programs either: its creates are refused."""
    template = _pod("ignored", {contract.ANNOTATION_ASSIGNMENT: "forged"})
    replicas = {"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {"name": "smuggler", "namespace": TENANT_NAMESPACE},
                "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "smuggler"}},
                         "template": {"metadata": {"labels": {"app": "smuggler"},
                                                   "annotations": template["metadata"]["annotations"]},
                                      "spec": template["spec"]}}}
    _create(cluster, replicas, "tenant")  # the template itself is the tenant's to write
    deadline = time.monotonic() + 60
    events = ""
    while REFUSAL not in events and time.monotonic() < deadline:
        time.sleep(0.5)
        events = cluster.kubectl("get", "events", "-n", TENANT_NAMESPACE, "--field-selector",
                                 "involvedObject.name=smuggler", "-o", "jsonpath={.items[*].message}")
    assert REFUSAL in events, events
    pods = cluster.kubectl("get", "pods", "-n", TENANT_NAMESPACE, "-l", "app=smuggler", "-o", "name")
    assert pods == "", pods
