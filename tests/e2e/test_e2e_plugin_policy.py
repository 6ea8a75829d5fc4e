"""The device plugin's ServiceAccount changes only its own Node and that node's pods, on the real kube-apiserver.

The install's ValidatingAdmissionPolicy (manifests/base/policies/device-plugin-own-node.yaml) and the
plugin's ClusterRole are applied as shipped to a control plane without a kubelet
(`LocalCluster(with_node=False)`); the test makes the two Node objects itself. The plugin's identity is a
TokenRequest token bound to the harness's node, as a DaemonSet pod's projected token is bound to its pod
(identities.py): the API server puts the node in the user's extra, and the policy holds the plugin to it.
A stolen plugin token must not rewrite another node's Inventory or another node's pods.

The same control plane runs the webhook with the shipped MutatingWebhookConfiguration, so the last
tests check the other half of GPU isolation there: a pod that skips the rewrite by writing
`tensor.ai/vgpu-milli` directly still reaches the webhook (matchConditions) and is refused when it is
privileged; the check names each violation.
"""

from __future__ import annotations

import dataclasses
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tensorai.proto import contract

from . import binaries
from .binaries import KubectlError
from .identities import write_kubeconfig
from .own_control_plane import skip_unless_own_control_plane

NAMESPACE = "e2e"
PLUGIN = "tensorai-device-plugin"
OTHER_NODE = "other-gpu-node"
REFUSAL = "ValidatingAdmissionPolicy 'tensorai-device-plugin-own-node'"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    skip_unless_own_control_plane("the plugin's token is minted there as its admin")
    from .cluster import LocalCluster

    local = LocalCluster(tmp_path_factory.mktemp("plugin-policy"), with_node=False).start()
    try:
        for node in (local.node_name, OTHER_NODE):
            local.kubectl("create", "-f", "-", stdin=json.dumps(
                {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node, "labels": {"gpu": "yes"}}}))
        for name, node in (("here", local.node_name), ("there", OTHER_NODE), ("unbound", None)):
            spec: dict[str, Any] = {"schedulerName": "nobody", "containers": [{"name": "c", "image": "e2e/none"}]}
            if node:
                spec["nodeName"] = node  # bound at creation; no kubelet runs it, which these checks do not need
            metadata = {"name": name, "namespace": NAMESPACE,
                        "annotations": {contract.ANNOTATION_EXCLUSIVE: "true"}}
            local.kubectl("create", "-f", "-", stdin=json.dumps(
                {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}))
        yield local
    finally:
        local.stop()


def _refused(action: Any) -> str:
    with pytest.raises(KubectlError) as refused:
        action()
    message = str(refused.value)
    assert REFUSAL in message, message
    return message


def _annotations(cluster: Any, *what: str) -> dict[str, str]:
    return json.loads(cluster.kubectl("get", *what, "-o", "json"))["metadata"].get("annotations") or {}


def test_the_plugins_token_names_its_node(cluster: Any) -> None:
    review = json.loads(cluster.kubectl("auth", "whoami", "-o", "json", who=PLUGIN))
    user = review["status"]["userInfo"]
    assert user["username"] == f"system:serviceaccount:tensorai-system:{PLUGIN}"
    assert user["extra"]["authentication.kubernetes.io/node-name"] == [cluster.node_name]


def test_the_plugin_may_use_only_the_verbs_it_calls(cluster: Any) -> None:
    def can(*args: str) -> bool:
        return cluster.kubectl("auth", "can-i", *args, who=PLUGIN, check=False).strip() == "yes"

    assert can("list", "pods", "-A") and can("watch", "pods", "-A") and can("patch", "pods", "-n", NAMESPACE)
    assert can("get", "nodes") and can("patch", "nodes")
    assert not can("get", "pods", "-n", NAMESPACE)  # never read one by one
    assert not can("delete", "pods", "-n", NAMESPACE) and not can("update", "nodes")
    assert not can("patch", "nodes", "--subresource=status")


def test_the_plugin_publishes_on_its_own_node_only(cluster: Any) -> None:
    here = cluster.node_name
    cluster.kubectl("annotate", "node", here, f"{contract.ANNOTATION_GPU_RECOVER}=GPU-1")  # the admin's request
    cluster.kubectl("annotate", "node", here, "--overwrite", f"{contract.ANNOTATION_INVENTORY}={{}}",
                    f"{contract.ANNOTATION_GPU_RECOVER}-", who=PLUGIN)
    annotations = _annotations(cluster, "node", here)
    assert annotations[contract.ANNOTATION_INVENTORY] == "{}" and contract.ANNOTATION_GPU_RECOVER not in annotations
    message = _refused(lambda: cluster.kubectl("annotate", "node", OTHER_NODE, "--overwrite",
                                               f"{contract.ANNOTATION_INVENTORY}={{}}", who=PLUGIN))
    assert f"node {here} may change only its own Node, not {OTHER_NODE}" in message
    assert contract.ANNOTATION_INVENTORY not in _annotations(cluster, "node", OTHER_NODE)


def test_the_plugin_publishes_its_gpu_labels_on_its_own_node_only(cluster: Any) -> None:
    """The labels InventoryPublisher sends with the Inventory (deviceplugin/inventory.py node_labels)."""
    here = cluster.node_name
    labels = {contract.LABEL_GPU_PRODUCT: "NVIDIA-H100-80GB-HBM3", contract.LABEL_GPU_MODEL: "H100",
              contract.LABEL_GPU_MEMORY: "81559", contract.LABEL_GPU_COUNT: "8",
              contract.LABEL_GPU_SHARING_MODE: "timeslice"}
    assert set(labels) == set(contract.PLUGIN_NODE_LABELS)
    _plugin_patch(cluster, f"/api/v1/nodes/{here}", {"annotations": {contract.ANNOTATION_INVENTORY: "{}"},
                                                     "labels": labels})
    node_labels = json.loads(cluster.kubectl("get", "node", here, "-o", "json"))["metadata"]["labels"]
    assert {key: node_labels.get(key) for key in labels} == labels and node_labels["gpu"] == "yes"
    _plugin_patch(cluster, f"/api/v1/nodes/{here}", {"labels": {contract.LABEL_GPU_MODEL: None}})  # and removes
    assert contract.LABEL_GPU_MODEL not in json.loads(cluster.kubectl("get", "node", here, "-o", "json"))[
        "metadata"]["labels"]
    message = _refused(lambda: _plugin_patch(cluster, f"/api/v1/nodes/{OTHER_NODE}", {"labels": labels}))
    assert f"node {here} may change only its own Node, not {OTHER_NODE}" in message


@pytest.mark.parametrize(("change", "reason"), [
    ({"metadata": {"annotations": {"team/owner": "mallory"}}}, "it changed team/owner"),
    ({"metadata": {"labels": {"gpu": "no"}}}, "of a Node; it changed label gpu"),
    ({"metadata": {"labels": {"gpu": None}}}, "it changed label gpu"),  # removing one is a change too
    ({"metadata": {"finalizers": ["stolen/keep"]}}, "never finalizers"),
    ({"spec": {"taints": [{"key": "dedicated", "value": "plugin", "effect": "NoSchedule"}]}}, "or spec"),
    ({"spec": {"unschedulable": True}}, "or spec"),  # kubectl cordon
])
def test_on_its_own_node_the_plugin_changes_nothing_but_its_annotations(
    cluster: Any, change: dict[str, Any], reason: str,
) -> None:
    message = _refused(lambda: _plugin_patch(cluster, f"/api/v1/nodes/{cluster.node_name}", **change))
    assert reason in message, message


def _plugin_patch(cluster: Any, path: str, metadata: dict[str, Any] | None = None, **body: Any) -> None:
    """A merge patch as the plugin sends it (proto/kubeclient.py, RawCoreApi): no GET first, which `kubectl patch`
    and `annotate` would need and the plugin's role does not grant."""
    token = yaml.safe_load(cluster.kubeconfig(PLUGIN).read_text())["users"][0]["user"]["token"]
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    request = urllib.request.Request(cluster.server + path, method="PATCH",
                                     data=json.dumps({"metadata": metadata or {}, **body}).encode(),
                                     headers={"Authorization": f"Bearer {token}",
                                              "Content-Type": "application/merge-patch+json"})
    try:
        urllib.request.urlopen(request, context=context, timeout=30).close()
    except urllib.error.HTTPError as error:
        raise KubectlError(f"PATCH {path}: {error.code}: {error.read().decode(errors='replace')}") from error


def _patch_pod(cluster: Any, pod: str, metadata: dict[str, Any]) -> None:
    _plugin_patch(cluster, f"/api/v1/namespaces/{NAMESPACE}/pods/{pod}", metadata)


def test_the_plugin_annotates_only_pods_bound_to_its_node(cluster: Any) -> None:
    _patch_pod(cluster, "here", {"annotations": {contract.ANNOTATION_ALLOCATED: "by-the-plugin",
                                                 contract.ANNOTATION_ASSIGNMENT: "swapped"}})
    annotations = _annotations(cluster, "pod", "here", "-n", NAMESPACE)
    assert annotations[contract.ANNOTATION_ALLOCATED] == "by-the-plugin"
    for pod, where in (("there", f"on node {OTHER_NODE}"), ("unbound", "not bound")):
        message = _refused(lambda pod=pod: _patch_pod(cluster, pod, {"annotations": {
            contract.ANNOTATION_ALLOCATED: "forged"}}))
        assert f"may change only pods bound to it, not {NAMESPACE}/{pod} ({where})" in message
    message = _refused(lambda: _patch_pod(cluster, "here", {"labels": {"app": "stolen"}}))
    assert "may change no label of a Pod; it changed label app" in message
    gpu_label = {"labels": {contract.LABEL_GPU_MODEL: "H100"}}  # a Node's label is not a Pod's
    assert "it changed label tensor.ai/gpu.model" in _refused(lambda: _patch_pod(cluster, "here", gpu_label))
    message = _refused(lambda: _patch_pod(cluster, "here", {"annotations": {"team/owner": "mallory"}}))
    assert "it changed team/owner" in message
    # removing one it does not own (the user's placement rule) counts as a change too
    message = _refused(lambda: _patch_pod(cluster, "here", {"annotations": {contract.ANNOTATION_EXCLUSIVE: None}}))
    assert f"it changed {contract.ANNOTATION_EXCLUSIVE}" in message


def test_a_plugin_token_without_a_node_claim_changes_nothing(cluster: Any) -> None:
    # The ServiceAccount's static token (in the API server's token file) authenticates the same user,
    # but bound to nothing: the policy cannot tell which node it belongs to.
    unbound = dataclasses.replace(cluster.identities[PLUGIN], mint=None)
    kubeconfig = write_kubeconfig(cluster.workdir / "plugin-unbound.kubeconfig", cluster.server, unbound)
    with pytest.raises(KubectlError) as refused:
        binaries.run_kubectl(kubeconfig, "annotate", "node", cluster.node_name, "--overwrite",
                             f"{contract.ANNOTATION_INVENTORY}={{}}")
    assert REFUSAL in str(refused.value) and "carries no node claim" in str(refused.value)


def _tenant_pod(name: str, resources: dict[str, str], **container: Any) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NAMESPACE},
                       "spec": {"schedulerName": "nobody", "containers": [
                           {"name": "c", "image": "e2e/none", "resources": {"limits": resources}, **container}]}})


def test_a_privileged_pod_writing_vgpu_milli_directly_is_refused_by_the_webhook(cluster: Any) -> None:
    privileged = {"securityContext": {"privileged": True}}
    with pytest.raises(KubectlError) as refused:
        cluster.kubectl("create", "-f", "-", who="tenant",
                        stdin=_tenant_pod("escape", {contract.RESOURCE_VGPU_MILLI: "250"}, **privileged))
    message = str(refused.value)
    assert 'admission webhook "vgpu.tensor.ai" denied the request' in message
    assert "spec.containers[0] (c): securityContext.privileged is true" in message
    with pytest.raises(KubectlError) as refused:
        cluster.kubectl("create", "-f", "-", who="tenant", stdin=_tenant_pod(
            "escape-env", {contract.RESOURCE_VGPU: "0.5"}, env=[{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}]))
    assert "env NVIDIA_VISIBLE_DEVICES is set by the device plugin" in str(refused.value)
    # not ours to judge: a privileged pod naming none of our resources is left to Pod Security
    cluster.kubectl("create", "-f", "-", who="tenant", stdin=_tenant_pod("not-ours", {"cpu": "1"}, **privileged))
