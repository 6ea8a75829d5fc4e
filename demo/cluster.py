"""Bring up the demo's local cluster: API stand-in, nodes (stub kubelet + real device plugin), extender, webhook.

Each part is the real program in its own process, reached over its real protocol - the API stand-in
too, so its server log stays out of the demo's screen and the demo itself talks to it only through
the kubernetes client and a kubeconfig, like every other program. The device plugins
register with their node's StubKubelet over v1beta1 gRPC on unix sockets and publish Inventory to the
stand-in through a kubeconfig; the extender watches the stand-in and serves HTTP; the webhook serves
HTTPS with a self-signed CA it writes into the MutatingWebhookConfiguration's caBundle, which is the
only CA the demo then trusts. Every step raises StepError naming itself when it fails.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from tensorai.demo.processes import ManagedProcess, ProcessGroup, StepError, module_command
from tensorai.demo.scenario import SCHEDULER_NAME, NodeSpec, Scenario
from tensorai.demo.stub_kubelet import StubKubelet
from tensorai.proto import contract

WEBHOOK_CONFIG_NAME = "tensorai-vgpu"  # the name manifests/base/webhook uses and the webhook patches
WEBHOOK_SERVICE = "tensorai-webhook"
WEBHOOK_NAMESPACE = "tensorai-system"
START_TIMEOUT_S = 90.0  # cold Python + grpc + kubernetes imports on a busy 2-core machine


@dataclass
class DemoNode:
    """One simulated node: its kubelet stand-in and its device plugin process."""

    spec: NodeSpec
    kubelet: StubKubelet
    plugin: ManagedProcess
    socket_dir: Path


@dataclass
class DemoCluster:
    """Everything `start_cluster` started; `stop()` undoes all of it."""

    processes: ProcessGroup
    socket_root: Path
    api_url: str = ""
    kubeconfig_path: Path | None = None
    nodes: dict[str, DemoNode] = field(default_factory=dict)
    extender_url: str = ""
    webhook_port: int = 0
    webhook_ca_path: Path | None = None
    api_client: Any = None

    def stop(self) -> None:
        self.processes.stop_all()
        for node in self.nodes.values():
            node.kubelet.stop()
        for path in sorted(self.socket_root.rglob("*"), reverse=True):
            if path.is_dir():
                path.rmdir()
            else:
                path.unlink(missing_ok=True)
        self.socket_root.rmdir()


def wait_until(what: str, predicate: Callable[[], bool], timeout_s: float, step: str) -> None:
    """Poll `predicate` until true; StepError naming `step` and `what` when `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise StepError(step, f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.1)


def _http_status(url_host: str, port: int, path: str) -> int:
    connection = http.client.HTTPConnection(url_host, port, timeout=2)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    except OSError:
        return 0
    finally:
        connection.close()


def read_json(call: Callable[..., Any], *args: Any) -> dict[str, Any]:
    """One API read as plain JSON (`_preload_content=False`: no model round trip); {} when not found."""
    try:
        return json.loads(call(*args, _preload_content=False).data)
    except ApiException as error:
        if error.status == 404:
            return {}
        raise


def _create_node(api_client: Any, name: str) -> None:
    """A Ready node labelled for the device plugin, as a joining kubelet would register it."""
    client.CoreV1Api(api_client).create_node({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {contract.LABEL_GPU_NODE: "true", "kubernetes.io/hostname": name}},
        "status": {
            "capacity": {"pods": "110"},
            "allocatable": {"pods": "110"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
        },
    }, _preload_content=False)


def _start_standin(cluster: DemoCluster, logs: Path) -> None:
    cluster.kubeconfig_path = logs.parent / "kubeconfig"
    standin = cluster.processes.start(
        "Kubernetes API stand-in",
        module_command("tensorai.demo.kube_standin", "--port", "0", "--kubeconfig", str(cluster.kubeconfig_path)),
        logs / "kube-standin.log",
    )
    cluster.api_url = standin.wait_for_line(r"^(http://[^\s]+)", START_TIMEOUT_S)[1]
    cluster.api_client = config.new_client_from_config(config_file=str(cluster.kubeconfig_path))


def _start_node(cluster: DemoCluster, spec: NodeSpec, logs: Path) -> DemoNode:
    socket_dir = cluster.socket_root / spec.name
    (socket_dir / "device-plugins").mkdir(parents=True)
    pod_resources = socket_dir / "pod-resources.sock"
    kubelet = StubKubelet(str(socket_dir / "device-plugins"), pod_resources_socket=str(pod_resources)).start()
    plugin = cluster.processes.start(
        f"device plugin of {spec.name}",
        module_command(
            "tensorai.deviceplugin.cli",
            "--backend", "sim",
            "--sim-gpus", spec.sim_gpus,
            "--device-plugin-dir", str(socket_dir / "device-plugins"),
            "--pod-resources-socket", str(pod_resources),
            "--node-name", spec.name,
            "--kubeconfig", str(cluster.kubeconfig_path),
            "--metrics-port", "0",
            "--inventory-interval", "10",
        ),
        logs / f"device-plugin-{spec.name}.log",
    )
    return DemoNode(spec, kubelet, plugin, socket_dir)


def _wait_node_ready(cluster: DemoCluster, node: DemoNode) -> None:
    step = f"register device plugin of {node.spec.name}"

    def registered() -> bool:
        if not node.plugin.running():
            raise StepError(step, f"the plugin exited with status {node.plugin.popen.returncode}; last output:\n"
                            f"{node.plugin.tail()}\n(full log: {node.plugin.log_path})")
        return bool(node.kubelet.registrations) and bool(node.kubelet.healthy_ids())

    wait_until("Register and a first ListAndWatch", registered, START_TIMEOUT_S, step)

    def published() -> bool:
        obj = read_json(client.CoreV1Api(cluster.api_client).read_node, node.spec.name)
        return contract.ANNOTATION_INVENTORY in ((obj.get("metadata") or {}).get("annotations") or {})

    wait_until(f"the {contract.ANNOTATION_INVENTORY} annotation", published, START_TIMEOUT_S,
               f"publish inventory of {node.spec.name}")
    # What kubelet does after a registration: advertise the device count in the Node's status.
    count = str(len(node.kubelet.healthy_ids()))
    client.CoreV1Api(cluster.api_client).patch_node_status(
        node.spec.name,
        {"status": {"capacity": {contract.RESOURCE_VGPU_MILLI: count},
                    "allocatable": {contract.RESOURCE_VGPU_MILLI: count}}},
    )


def _webhook_configuration() -> dict[str, Any]:
    """The MutatingWebhookConfiguration of manifests/base/webhook, without a caBundle yet."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": WEBHOOK_CONFIG_NAME},
        "webhooks": [{
            "name": "vgpu.tensor.ai",
            "admissionReviewVersions": ["v1"],
            "clientConfig": {"service": {"name": WEBHOOK_SERVICE, "namespace": WEBHOOK_NAMESPACE,
                                         "path": "/mutate", "port": 443}},
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
        }],
    }


def _launch_webhook(cluster: DemoCluster, logs: Path) -> ManagedProcess:
    registration = client.AdmissionregistrationV1Api(cluster.api_client)
    registration.create_mutating_webhook_configuration(_webhook_configuration(), _preload_content=False)
    return cluster.processes.start(
        "webhook",
        module_command(
            "tensorai.scheduler.webhook_cli",
            "--self-signed", "--patch-ca-bundle",
            "--service-name", WEBHOOK_SERVICE, "--namespace", WEBHOOK_NAMESPACE,
            "--webhook-config-name", WEBHOOK_CONFIG_NAME,
            "--scheduler-name", SCHEDULER_NAME,
            "--kubeconfig", str(cluster.kubeconfig_path),
            "--address", "127.0.0.1", "--port", "0",
        ),
        logs / "webhook.log",
    )


def _wait_webhook(cluster: DemoCluster, webhook: ManagedProcess, logs: Path) -> None:
    registration = client.AdmissionregistrationV1Api(cluster.api_client)
    cluster.webhook_port = int(webhook.wait_for_line(r"serving https://[^:]+:(\d+)/mutate", START_TIMEOUT_S)[1])

    def ca_bundle() -> str:
        obj = read_json(registration.read_mutating_webhook_configuration, WEBHOOK_CONFIG_NAME)
        hooks = obj.get("webhooks") or [{}]
        return (hooks[0].get("clientConfig") or {}).get("caBundle") or ""

    wait_until("the webhook to write its CA into the caBundle", lambda: bool(ca_bundle()), START_TIMEOUT_S,
               "patch the webhook caBundle")
    ca_path = logs.parent / "webhook-ca.pem"
    ca_path.write_bytes(base64.b64decode(ca_bundle()))
    cluster.webhook_ca_path = ca_path


def _launch_extender(cluster: DemoCluster, logs: Path) -> ManagedProcess:
    return cluster.processes.start(
        "extender",
        module_command(
            "tensorai.scheduler.cli",
            "--kubeconfig", str(cluster.kubeconfig_path),
            "--address", "127.0.0.1", "--port", "0",
            "--requeue-interval-seconds", "1",
        ),
        logs / "extender.log",
    )


def _wait_extender(cluster: DemoCluster, extender: ManagedProcess) -> None:
    port = int(extender.wait_for_line(r"serving on http://[^:]+:(\d+)", START_TIMEOUT_S)[1])
    cluster.extender_url = f"http://127.0.0.1:{port}"
    wait_until("GET /readyz = 200 (cluster view synced)", lambda: _http_status("127.0.0.1", port, "/readyz") == 200,
               START_TIMEOUT_S, "start extender")


def start_cluster(scenario: Scenario, out_dir: Path, progress: Callable[[str], None]) -> DemoCluster:
    """Start every part for `scenario`; on failure everything already started is stopped again."""
    logs = out_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    # Unix socket paths are limited to ~107 bytes: keep them under a short temporary directory.
    socket_root = Path(tempfile.mkdtemp(prefix="tensorai-demo-"))
    cluster = DemoCluster(processes=ProcessGroup(), socket_root=socket_root)
    try:
        _start_standin(cluster, logs)
        progress(f"Kubernetes API stand-in on {cluster.api_url}")
        custom = client.CustomObjectsApi(cluster.api_client)
        try:
            for spec in scenario.nodes:
                _create_node(cluster.api_client, spec.name)
            for quota in scenario.quotas:
                custom.create_namespaced_custom_object(
                    contract.QUOTA_GROUP, contract.QUOTA_VERSION, quota.namespace, contract.QUOTA_PLURAL,
                    quota.to_object(), _preload_content=False)
        except ApiException as error:
            raise StepError("create nodes and GPUQuotas", f"HTTP {error.status}: {error.body}") from error
        # Launch everything first, then wait: the programs' start-up overlaps on the CPU.
        for spec in scenario.nodes:
            cluster.nodes[spec.name] = _start_node(cluster, spec, logs)
        webhook = _launch_webhook(cluster, logs)
        extender = _launch_extender(cluster, logs)
        _wait_webhook(cluster, webhook, logs)
        progress(f"webhook on https://127.0.0.1:{cluster.webhook_port}/mutate (CA from the caBundle)")
        for node in cluster.nodes.values():
            _wait_node_ready(cluster, node)
            progress(f"node {node.spec.name}: {node.spec.sim_gpus}, {len(node.kubelet.healthy_ids())} devices")
        _wait_extender(cluster, extender)
        progress(f"extender on {cluster.extender_url}")
    except BaseException:
        cluster.stop()
        raise
    return cluster


def post_json(url: str, path: str, body: Any, *, context: ssl.SSLContext | None = None,
              timeout_s: float = 10.0) -> tuple[int, Any]:
    """POST a JSON body (kube-scheduler's and kube-apiserver's way: Content-Type application/json)."""
    scheme, _, rest = url.partition("://")
    host, _, port = rest.partition(":")
    data = json.dumps(body).encode()
    if scheme == "https":
        connection: http.client.HTTPConnection = http.client.HTTPSConnection(
            host, int(port), timeout=timeout_s, context=context)
    else:
        connection = http.client.HTTPConnection(host, int(port), timeout=timeout_s)
    try:
        connection.request("POST", path, body=data, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        raw = response.read()
    finally:
        connection.close()
    try:
        return response.status, json.loads(raw)
    except ValueError:
        return response.status, raw.decode(errors="replace")
