"""The Helm chart on a real API server: its life cycle, and a fractional pod on what it installed.

Each test has a cluster of its own: the suite's usual cluster already holds the kustomize install,
and the chart's cluster-scoped objects have the same names.

- life cycle: `LocalCluster(with_node=False, install=False)` (etcd, kube-apiserver,
  kube-controller-manager; no kubelet, so it does not wait for the node lock): install, upgrade,
  rollback, uninstall. Without a node the Deployments' pods stay Pending.
- a quarter-GPU pod: `LocalCluster(install=<helm install>)`: the chart's namespace, CRD, RBAC,
  admission policies, webhook configuration and scheduler configuration, with our three programs on
  the host under the chart's ServiceAccounts as the harness runs them after the kustomize install (no
  registry here, so the chart's own pods are kept off the node with a node selector).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tensorai.proto import contract
from tensorai.proto.kubeclient import kube_api_client

from . import binaries
from .cluster import LocalCluster, wait_until
from .pods import NAMESPACE as TEST_NAMESPACE
from .pods import Placement, PodClient, assignment_of, env_from_log, gpu_pod

CHART = binaries.REPO_ROOT / "charts" / "tensorai-vgpu"
RELEASE = "tensorai-vgpu"
NAMESPACE = "tensorai-system"
CRD = "gpuquotas.tensor.ai"
GONE_TIMEOUT_S = 120.0


def _why_not() -> str | None:
    if os.environ.get("TENSORAI_E2E", "1") == "0":
        return "TENSORAI_E2E=0"
    if os.environ.get("TENSORAI_E2E_KUBECONFIG"):
        return "the chart's life cycle needs a cluster without tensor.ai installed (TENSORAI_E2E_KUBECONFIG is set)"
    return binaries.missing_for_local_cluster() or binaries.missing_helm()


class Helm:
    """The helm CLI against one cluster; `template` renders what `install` would apply there."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.program = str(binaries.helm_program())
        self.cluster = cluster
        self.kubeconfig = str(cluster.kubeconfig("admin"))

    def __call__(self, *args: str, timeout: float = 180) -> str:
        result = subprocess.run([self.program, "--kubeconfig", self.kubeconfig, *args], capture_output=True,
                                text=True, timeout=timeout, check=False)
        if result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result.stdout

    def template(self, *args: str) -> str:
        version = json.loads(self.cluster.kubectl("version", "-o", "json"))["serverVersion"]["gitVersion"]
        return self("template", RELEASE, str(CHART), "--kube-version", version, *args)


@pytest.fixture(scope="module")
def helm() -> Iterator[Helm]:
    reason = _why_not()
    if reason:
        pytest.skip(f"helm end-to-end test skipped: {reason}")
    # the workdir (/tmp/tensorai-e2e-*, kept with its logs) is not pytest's: other sessions prune those
    cluster = LocalCluster(with_node=False, install=False).start()
    try:
        yield Helm(cluster)
    finally:
        cluster.stop()


def live(cluster: LocalCluster, manifest: str) -> dict[tuple[str, str], dict[str, Any]]:
    """The objects of `manifest` that exist in the cluster, by (kind, name)."""
    found = cluster.kubectl("get", "-f", "-", "-o", "json", "--ignore-not-found", stdin=manifest)
    document = json.loads(found) if found.strip() else {"items": []}
    items = document["items"] if document.get("kind", "List") == "List" else [document]  # one object: itself
    return {(obj["kind"], obj["metadata"]["name"]): obj for obj in items}


def expected(manifest: str) -> set[tuple[str, str]]:
    return {(doc["kind"], doc["metadata"]["name"]) for doc in yaml.safe_load_all(manifest) if doc}


def revisions(helm: Helm) -> dict[int, str]:
    """The release's records as Helm stores them (Secrets owner=helm in the namespace it ran in): revision -> status."""
    records = json.loads(helm.cluster.kubectl("get", "secrets", "-n", "default", "-l", f"owner=helm,name={RELEASE}",
                                              "-o", "json"))["items"]
    return {int(r["metadata"]["labels"]["version"]): r["metadata"]["labels"]["status"] for r in records}


def test_install_upgrade_rollback_uninstall_leaves_only_the_kept_crd(helm: Helm) -> None:
    cluster = helm.cluster
    manifest = helm.template()
    wanted = expected(manifest)

    # install: every object the chart renders exists, owned by the release
    printed = helm("install", RELEASE, str(CHART))
    assert "kubectl label node <gpu-node> tensor.ai/gpu-node=true" in printed, printed  # NOTES.txt
    objects = live(cluster, manifest)
    assert set(objects) == wanted, f"missing after install: {sorted(wanted - set(objects))}"
    for key, obj in objects.items():
        assert obj["metadata"]["labels"].get("app.kubernetes.io/instance") == RELEASE, key
    scheduler = objects[("Deployment", "tensorai-scheduler")]
    version = json.loads(cluster.kubectl("version", "-o", "json"))["serverVersion"]["gitVersion"]
    images = {c["name"]: c["image"] for c in scheduler["spec"]["template"]["spec"]["containers"]}
    assert images["kube-scheduler"] == f"registry.k8s.io/kube-scheduler:{version.split('-')[0].split('+')[0]}"
    assert objects[("Namespace", NAMESPACE)]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    assert objects[("CustomResourceDefinition", CRD)]["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"

    # upgrade with changed values: one scheduler (so no PodDisruptionBudget), debug logs on the plugin
    helm("upgrade", RELEASE, str(CHART), "--set", "scheduler.replicas=1", "--set", "devicePlugin.logLevel=DEBUG")
    objects = live(cluster, manifest)
    assert objects[("Deployment", "tensorai-scheduler")]["spec"]["replicas"] == 1
    assert ("PodDisruptionBudget", "tensorai-scheduler") not in objects
    plugin_args = objects[("DaemonSet", "tensorai-device-plugin")]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--log-level=DEBUG" in plugin_args
    assert revisions(helm) == {1: "superseded", 2: "deployed"}

    # rollback to the first revision: everything as installed again
    helm("rollback", RELEASE, "1")
    objects = live(cluster, manifest)
    assert set(objects) == wanted
    assert objects[("Deployment", "tensorai-scheduler")]["spec"]["replicas"] == 2
    plugin_args = objects[("DaemonSet", "tensorai-device-plugin")]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--log-level=INFO" in plugin_args
    assert revisions(helm)[3] == "deployed"

    # uninstall: nothing left but the CRD the chart keeps, and no release record
    helm("uninstall", RELEASE)
    wait_until("every object of the release but the CRD to be gone",
               lambda: set(live(cluster, manifest)) == {("CustomResourceDefinition", CRD)}, GONE_TIMEOUT_S, 1.0)
    assert revisions(helm) == {}

    # a new install of the same release adopts the kept CRD; with crds.keep=false, uninstall takes it too
    helm("install", RELEASE, str(CHART), "--set", "crds.keep=false")
    assert set(live(cluster, manifest)) == wanted
    helm("uninstall", RELEASE)
    wait_until("every object of the release to be gone", lambda: not live(cluster, manifest), GONE_TIMEOUT_S, 1.0)
    assert revisions(helm) == {}
    leftover = cluster.kubectl("get", "clusterroles,clusterrolebindings,mutatingwebhookconfigurations,"
                               "validatingadmissionpolicies,validatingadmissionpolicybindings",
                               "-l", "app.kubernetes.io/part-of=tensorai-vgpu", "-o", "name")
    assert leftover.strip() == ""


# The chart's pods cannot start here (no registry): keep them off the node, which runs our programs on the host.
OFF_THE_NODE = {part: {"nodeSelector": {"tensor.ai/helm-e2e": "no-such-node"}}
                for part in ("devicePlugin", "scheduler", "webhook")}


def install_with_helm(cluster: LocalCluster) -> list[dict[str, Any]]:
    """LocalCluster's install step done by `helm install`; the objects the chart applied."""
    helm = Helm(cluster)
    values = cluster.workdir / "helm-values.yaml"
    values.write_text(yaml.safe_dump(OFF_THE_NODE))
    helm("install", RELEASE, str(CHART), "-f", str(values))
    # Our webhook runs on the host, not behind the Service: point the configuration at it, as the
    # harness does for the kustomize install (the webhook then patches in its caBundle).
    url = f"https://127.0.0.1:{cluster.ports['webhook']}/mutate"
    cluster.kubectl("patch", "mutatingwebhookconfiguration", "tensorai-vgpu", "--type=json", "-p", json.dumps([
        {"op": "remove", "path": "/webhooks/0/clientConfig/service"},
        {"op": "add", "path": "/webhooks/0/clientConfig/url", "value": url}]))
    cluster.kubectl("create", "namespace", TEST_NAMESPACE)
    return [doc for doc in yaml.safe_load_all(helm.template("-f", str(values))) if doc]


@pytest.mark.own_node  # its own cluster with a kubelet: runs before the session's cluster (conftest.py)
def test_a_quarter_gpu_pod_runs_on_what_the_chart_installed() -> None:
    reason = _why_not()
    if reason:
        pytest.skip(f"helm end-to-end test skipped: {reason}")
    cluster = LocalCluster(install=install_with_helm).start()
    try:
        pods = PodClient(kube_api_client(cluster.kubeconfig("admin")))
        pods.create(gpu_pod("helm-quarter", "0.25", seconds=0.5))
        pod = pods.wait_phase(["helm-quarter"], timeout_s=90)["helm-quarter"]
        assert pod["status"]["phase"] == "Succeeded", pods.events_for("helm-quarter")
        assert pod["spec"]["schedulerName"] == "tensorai-scheduler"
        assert pod["spec"]["containers"][0]["resources"]["limits"][contract.RESOURCE_VGPU_MILLI] == "250"
        assignment = assignment_of(pod)
        assert assignment["main"].milli == 250
        meta = pod["metadata"]
        env = env_from_log(cluster.container_log(meta["namespace"], meta["name"], meta["uid"], "main"))
        assert Placement.from_env(env) == assignment["main"]
        config_maps = [o["metadata"]["name"] for o in cluster.install if o["kind"] == "ConfigMap"]
        assert any(name.startswith("tensorai-scheduler-config-") for name in config_maps)  # the chart's, in use
    finally:
        cluster.stop()
