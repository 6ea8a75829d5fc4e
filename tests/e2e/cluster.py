"""A real single-node Kubernetes on 127.0.0.1 with tensor.ai installed, for the end-to-end suite.

`LocalCluster.start()` runs, each as its own process and stopped by PID at the end: etcd,
kube-apiserver (token auth, Node+RBAC), kube-controller-manager, containerd with a loopback-only CNI,
kubelet (the real device manager and pod-resources server), the default kube-scheduler, and the
project's install: what `kubectl kustomize manifests/base` renders - namespace, CRD, every
ServiceAccount/Role/Binding, the MutatingWebhookConfiguration (pointed at `https://127.0.0.1:<port>`
instead of the Service; the webhook writes its own caBundle, as in the cluster) and the scheduler
configuration. Our three programs run on the host under their ServiceAccounts' identities with
the Deployment's and DaemonSet's arguments: tensorai-webhook, tensorai-extender behind a second
kube-scheduler started with the shipped KubeSchedulerConfiguration, and tensorai-device-plugin
(simulated GPUs) registered with the real kubelet. Workloads are hostNetwork busybox pods.

Facts about running these here are in ../shared/k8s/README.md; the suite's own notes in
tests/e2e/README.md.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tensorai.demo.processes import ManagedProcess, ProcessGroup, module_command

from . import binaries, images
from .identities import Identity, cluster_identities, write_kubeconfig, write_token_file

NODE_NAME = "e2e-gpu-node"
SIM_GPUS = "8xH100:81559"
SCHEDULER_NAME = "tensorai-scheduler"
NAMESPACE = "tensorai-system"
DEVICE_PLUGIN_DIR = Path("/var/lib/kubelet/device-plugins")  # fixed in kubelet, not under --root-dir
CHECKPOINT = DEVICE_PLUGIN_DIR / "kubelet_internal_checkpoint"
START_TIMEOUT_S = 120.0
# What the harness applies of the rendered install; workloads are replaced by host processes.
APPLIED_KINDS = {"Namespace", "CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
                 "Role", "RoleBinding", "MutatingWebhookConfiguration", "ValidatingAdmissionPolicy",
                 "ValidatingAdmissionPolicyBinding"}


class ClusterError(RuntimeError):
    """A part of the cluster did not come up; the message names it and its log."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(what: str, predicate: Callable[[], Any], timeout_s: float, interval_s: float = 0.1) -> Any:
    """predicate()'s first truthy value; ClusterError naming `what` when time runs out."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as error:  # a poll retries whatever the check raised
            last_error = error
        time.sleep(interval_s)
    raise ClusterError(f"timed out after {timeout_s:.0f} s waiting for {what}"
                       + (f" (last error: {last_error})" if last_error else ""))


def _http_ok(url: str, token: str | None = None) -> bool:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    context = ssl._create_unverified_context()  # the API server's self-signed cert, 127.0.0.1
    with contextlib.suppress(OSError), urllib.request.urlopen(request, timeout=2, context=context) as response:
        return response.status == 200
    return False


def rendered_install(overlay: str = "manifests/base") -> list[dict[str, Any]]:
    """What `kubectl kustomize <overlay>` renders: the objects a cluster admin applies."""
    output = subprocess.run(["kubectl", "kustomize", str(binaries.REPO_ROOT / overlay)], check=True,
                            capture_output=True, text=True, timeout=60).stdout
    return [doc for doc in yaml.safe_load_all(output) if doc]


class LocalCluster:
    """Every process of the cluster; `stop()` ends them all (also after a failed start)."""

    def __init__(self, workdir: Path | None = None, *, sim_gpus: str = SIM_GPUS, with_node: bool = True,
                 scheduler_config_edit: Callable[[dict[str, Any]], None] | None = None,
                 scheduler_args: tuple[str, ...] = (), extender_log_level: str = "DEBUG",
                 install: bool | Callable[[LocalCluster], list[dict[str, Any]]] = True) -> None:
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="tensorai-e2e-"))
        self.logs = self.workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.sim_gpus = sim_gpus
        self.with_node = with_node
        # True: the kustomize install below. False: the control plane only (etcd, kube-apiserver,
        # kube-controller-manager, and the node when with_node), nothing of ours applied or started. A
        # callable installs the project itself (test_e2e_helm.py: the Helm chart) and returns the objects
        # it applied; our programs then run on the host as after the kustomize install.
        self.installer = install
        self._node_lock: Any = None
        self.node_name = NODE_NAME
        self.scheduler_config_edit = scheduler_config_edit
        self.scheduler_args = tuple(scheduler_args)  # extra flags of the extender's kube-scheduler
        # DEBUG for the tests (every API call in the log); benchmarks use the shipped INFO: a DEBUG line
        # per API request is CPU the extender does not spend in production
        self.extender_log_level = extender_log_level
        self.processes = ProcessGroup()
        self.identities: dict[str, Identity] = cluster_identities([NODE_NAME])
        self.kubeconfigs: dict[str, Path] = {}
        self.ports = {name: free_port() for name in (
            "etcd", "etcd-peer", "apiserver", "kcm", "scheduler", "default-scheduler", "kubelet",
            "kubelet-healthz", "extender", "extender-metrics", "webhook")}
        self.server = f"https://127.0.0.1:{self.ports['apiserver']}"
        self.kubelet_root = self.workdir / "kubelet"
        self.pod_logs = self.workdir / "pod-logs"
        self.pod_resources_socket = self.kubelet_root / "pod-resources" / "kubelet.sock"
        self.containerd_socket = self.workdir / "containerd" / "containerd.sock"
        self.named: dict[str, ManagedProcess] = {}
        self.programs: dict[str, Path] = {}
        self.install: list[dict[str, Any]] = []

    # ---- life cycle ----------------------------------------------------------------------------
    def start(self) -> LocalCluster:
        try:
            self.programs = binaries.unpacked_programs()
            self._start_etcd()
            self._start_apiserver()
            self._start_controller_manager()
            if self.installer is True:
                self._apply_install()
            elif self.installer:
                self.install = self.installer(self)
            if self.with_node:
                self._node_lock = binaries.hold_node_lock()
                self._start_containerd()
                self._start_kubelet()
                self._prepare_node()
                if self.installer:
                    self.start_device_plugin()
            if self.installer:
                self.start_extender()
                self._start_schedulers()
                self.start_webhook()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Pods first (their containers are containerd's children, not ours), then every process by PID."""
        with contextlib.suppress(Exception):
            self.kubectl("delete", "pods", "--all", "--all-namespaces", "--grace-period=0", "--force",
                         "--wait=false", timeout=20)
        self._kill_containers()
        self.processes.stop_all(timeout_s=10.0)
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            for mount in reversed(Path("/proc/mounts").read_text().splitlines()):
                target = mount.split()[1]
                if target.startswith(str(self.workdir)):
                    subprocess.run(["umount", "-l", target], capture_output=True, timeout=10)
        if getattr(self, "_etcd_data", None):
            shutil.rmtree(self._etcd_data, ignore_errors=True)
        if self._node_lock is not None:
            self._node_lock.close()
            self._node_lock = None

    def _kill_containers(self) -> None:
        if not self.containerd_socket.exists():
            return
        ctr = ["ctr", "--address", str(self.containerd_socket), "-n", "k8s.io"]
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            tasks = subprocess.run([*ctr, "tasks", "ls", "-q"], capture_output=True, text=True, timeout=20).stdout
            for task in tasks.split():
                subprocess.run([*ctr, "tasks", "kill", "-s", "SIGKILL", task], capture_output=True, timeout=10)
            time.sleep(0.5)
            for task in tasks.split():
                subprocess.run([*ctr, "tasks", "delete", "-f", task], capture_output=True, timeout=10)

    # ---- helpers -------------------------------------------------------------------------------
    def _start(self, name: str, command: list[str], env: dict[str, str] | None = None) -> ManagedProcess:
        previous = self.named.get(name)
        log_path = self.logs / f"{name}.log"
        if previous is not None and log_path.exists():  # keep the earlier run's log beside the new one
            count = len(list(self.logs.glob(f"{name}.*.log")))
            log_path.rename(self.logs / f"{name}.{count}.log")
        process = self.processes.start(name, command, log_path, env=env)
        self.named[name] = process
        return process

    def kubeconfig(self, who: str) -> Path:
        if who not in self.kubeconfigs:
            self.kubeconfigs[who] = write_kubeconfig(self.workdir / f"{who.replace(':', '-')}.kubeconfig",
                                                     self.server, self.identities[who])
        return self.kubeconfigs[who]

    def kubectl(self, *args: str, who: str = "admin", stdin: str | None = None, timeout: float = 60,
                check: bool = True) -> str:
        return binaries.run_kubectl(self.kubeconfig(who), *args, stdin=stdin, timeout=timeout, check=check)

    def log_of(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def _wait_healthy(self, name: str, url: str, token: str | None = None) -> None:
        process = self.named[name]

        def healthy() -> bool:
            if not process.running():
                raise ClusterError(f"{name} exited ({process.popen.returncode}); last output:\n{process.tail(15)}")
            return _http_ok(url, token)

        try:
            wait_until(f"{name} at {url}", healthy, START_TIMEOUT_S, 0.2)
        except ClusterError as error:
            if "exited" in str(error):
                raise
            raise ClusterError(f"{error}; last output of {name}:\n{process.tail(15)}") from None

    # ---- control plane -------------------------------------------------------------------------
    def _start_etcd(self) -> None:
        # etcd's data in memory when /dev/shm exists: fsyncs on this VM's disk would dominate every write.
        shm = Path("/dev/shm")
        data_dir = Path(tempfile.mkdtemp(prefix="tensorai-e2e-etcd-", dir=shm if shm.is_dir() else self.workdir))
        self._etcd_data = data_dir
        client, peer = f"http://127.0.0.1:{self.ports['etcd']}", f"http://127.0.0.1:{self.ports['etcd-peer']}"
        self._start("etcd", ["etcd", "--name", "e2e", "--data-dir", str(data_dir),
                             "--listen-client-urls", client, "--advertise-client-urls", client,
                             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                             "--initial-cluster", f"e2e={peer}", "--log-level", "warn"])
        self._wait_healthy("etcd", f"{client}/health")

    def _start_apiserver(self) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        sa_key, sa_pub = self.workdir / "sa.key", self.workdir / "sa.pub"
        sa_key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
        sa_pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                         serialization.PublicFormat.SubjectPublicKeyInfo))
        tokens = self.workdir / "tokens.csv"
        write_token_file(tokens, self.identities)
        self._start("kube-apiserver", [
            str(self.programs["kube-apiserver"]),
            f"--etcd-servers=http://127.0.0.1:{self.ports['etcd']}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={self.ports['apiserver']}", f"--cert-dir={self.workdir / 'apiserver-certs'}",
            f"--token-auth-file={tokens}", "--authorization-mode=Node,RBAC",
            "--disable-admission-plugins=ServiceAccount", "--allow-privileged=true",
            "--endpoint-reconciler-type=none", "--service-cluster-ip-range=10.96.0.0/16",
            f"--service-account-key-file={sa_pub}", f"--service-account-signing-key-file={sa_key}",
            "--service-account-issuer=https://kubernetes.default.svc",
        ])
        self._wait_healthy("kube-apiserver", f"{self.server}/readyz", self.identities["admin"].token)

    def _start_controller_manager(self) -> None:
        self._start("kube-controller-manager", [
            str(self.programs["kube-controller-manager"]), f"--kubeconfig={self.kubeconfig('admin')}",
            "--use-service-account-credentials=false", "--leader-elect=false",
            "--controllers=*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle,-service-lb-controller,-route",
            "--bind-address=127.0.0.1", f"--secure-port={self.ports['kcm']}",
            f"--service-account-private-key-file={self.workdir / 'sa.key'}",
            "--concurrent-deployment-syncs=5", "--concurrent-replicaset-syncs=5",
        ])

    def _apply_install(self) -> None:
        self.install = rendered_install()
        applied = []
        for obj in self.install:
            if obj["kind"] not in APPLIED_KINDS:
                continue
            if obj["kind"] == "MutatingWebhookConfiguration":
                obj = json.loads(json.dumps(obj))
                for hook in obj["webhooks"]:
                    path = hook["clientConfig"].pop("service").get("path", "/mutate")
                    hook["clientConfig"]["url"] = f"https://127.0.0.1:{self.ports['webhook']}{path}"
            applied.append(obj)
        self.kubectl("apply", "--server-side", "-f", "-", stdin=yaml.safe_dump_all(applied))
        self.kubectl("create", "namespace", "e2e")
        # The tenant: what the `edit` role lets a namespace's users do (issue 13 tests attacks with it).
        self.kubectl("create", "rolebinding", "tenant-edit", "-n", "e2e", "--clusterrole=edit",
                     "--serviceaccount=e2e:default")

    def scheduler_config(self) -> dict[str, Any]:
        """The shipped KubeSchedulerConfiguration (from the rendered ConfigMap), wired to this cluster."""
        config_map = next(o for o in self.install if o["kind"] == "ConfigMap"
                          and o["metadata"]["name"].startswith("tensorai-scheduler-config"))
        config = yaml.safe_load(config_map["data"]["scheduler-config.yaml"])
        config.setdefault("clientConnection", {})["kubeconfig"] = str(self.kubeconfig("tensorai-scheduler"))
        for extender in config.get("extenders") or []:
            extender["urlPrefix"] = f"http://127.0.0.1:{self.ports['extender']}"
        if self.scheduler_config_edit:
            self.scheduler_config_edit(config)
        return config

    def _start_schedulers(self) -> None:
        path = self.workdir / "scheduler-config.yaml"
        path.write_text(yaml.safe_dump(self.scheduler_config()))
        self._start("kube-scheduler", [
            str(self.programs["kube-scheduler"]), f"--config={path}", "--bind-address=127.0.0.1",
            f"--secure-port={self.ports['scheduler']}", "--v=2", *self.scheduler_args])
        self._start("default-scheduler", [
            str(self.programs["kube-scheduler"]), f"--kubeconfig={self.kubeconfig('kube-scheduler')}",
            "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={self.ports['default-scheduler']}"])
        self._wait_healthy("kube-scheduler", f"https://127.0.0.1:{self.ports['scheduler']}/healthz")

    def start_scheduler(self, name: str, config: dict[str, Any], args: tuple[str, ...] = ()) -> ManagedProcess:
        """Another kube-scheduler (the same binary) named `name` with this KubeSchedulerConfiguration;
        its secure port is `self.ports[name]`. For benchmarks that compare configurations side by side."""
        self.ports[name] = free_port()
        path = self.workdir / f"{name}-config.yaml"
        path.write_text(yaml.safe_dump(config))
        process = self._start(name, [
            str(self.programs["kube-scheduler"]), f"--config={path}", "--bind-address=127.0.0.1",
            f"--secure-port={self.ports[name]}", "--v=2", *args])
        self._wait_healthy(name, f"https://127.0.0.1:{self.ports[name]}/healthz")
        return process

    # ---- node ----------------------------------------------------------------------------------
    def _start_containerd(self) -> None:
        root = self.workdir / "containerd"
        cni_conf = self.workdir / "cni"
        cni_conf.mkdir(parents=True, exist_ok=True)
        (cni_conf / "10-lo.conflist").write_text(json.dumps(
            {"cniVersion": "1.0.0", "name": "lo", "plugins": [{"type": "loopback"}]}))
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        config = f"""version = 2
root = "{root / 'root'}"
state = "{root / 'state'}"
[grpc]
  address = "{self.containerd_socket}"
[{cri}]
  sandbox_image = "{images.PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  [{cri}.cni]
    bin_dir = "{binaries.CNI_DIR}"
    conf_dir = "{cni_conf}"
  [{cri}.containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [{cri}.containerd.runtimes.runc.options]
      SystemdCgroup = false
"""
        root.mkdir(parents=True, exist_ok=True)
        (root / "config.toml").write_text(config)
        self._start("containerd", ["containerd", "--config", str(root / "config.toml")])
        wait_until("containerd's socket", self.containerd_socket.exists, START_TIMEOUT_S)
        for archive in images.write_images(self.workdir / "images"):
            subprocess.run(["ctr", "--address", str(self.containerd_socket), "-n", "k8s.io", "images", "import",
                            str(archive)], check=True, capture_output=True, timeout=120)

    def _kubelet_config(self) -> Path:
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "failCgroupV1": False, "cgroupDriver": "cgroupfs", "failSwapOn": False, "resolvConf": "",
            "evictionHard": {}, "address": "127.0.0.1", "port": self.ports["kubelet"], "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": self.ports["kubelet-healthz"],
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "podLogsDir": str(self.pod_logs),
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False}},
            "authorization": {"mode": "AlwaysAllow"},
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False, "maxPods": 250,
            "nodeStatusUpdateFrequency": "4s", "syncFrequency": "10s",
        }
        path = self.workdir / "kubelet-config.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    def start_kubelet(self) -> None:
        self._start("kubelet", [
            str(self.programs["kubelet"]), f"--config={self._kubelet_config()}",
            f"--kubeconfig={self.kubeconfig('node:' + NODE_NAME)}", f"--root-dir={self.kubelet_root}",
            f"--hostname-override={NODE_NAME}", "--node-ip=127.0.0.1", "--v=2"])
        self._wait_healthy("kubelet", f"http://127.0.0.1:{self.ports['kubelet-healthz']}/healthz")

    def stop_kubelet(self) -> None:
        self.named["kubelet"].stop(timeout_s=10.0)

    def _start_kubelet(self) -> None:
        DEVICE_PLUGIN_DIR.mkdir(parents=True, exist_ok=True)
        CHECKPOINT.unlink(missing_ok=True)  # a previous run's allocations would be restored for pods that are gone
        self.start_kubelet()

    def _prepare_node(self) -> None:
        """Wait for the Node, label it a GPU node, and lift the not-ready taint nobody else removes here."""
        wait_until("the node to register", lambda: self.kubectl("get", "node", NODE_NAME, check=False),
                   START_TIMEOUT_S, 0.5)
        self.kubectl("label", "node", NODE_NAME, "tensor.ai/gpu-node=true", "--overwrite")
        wait_until("the node to be Ready", lambda: self.kubectl(
            "get", "node", NODE_NAME, "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}") == "True",
            START_TIMEOUT_S, 0.5)
        self.kubectl("taint", "node", NODE_NAME, "node.kubernetes.io/not-ready:NoSchedule-", check=False)

    # ---- our programs --------------------------------------------------------------------------
    def renew_device_plugin(self) -> ManagedProcess:
        """After the Node object was deleted and registered again: the plugin's token was bound to the old
        Node, and the API server refuses a bound token once its object is gone (401), as it would end a
        DaemonSet pod's. Mint a token for the new Node and restart the plugin, as its DaemonSet would."""
        self.kubeconfigs.pop("tensorai-device-plugin", None)
        plugin = self.named.get("device-plugin")
        if plugin is not None:
            plugin.stop()
        return self.start_device_plugin()

    def start_device_plugin(self) -> ManagedProcess:
        process = self._start("device-plugin", module_command(
            "tensorai.deviceplugin.cli", "--backend=sim", f"--sim-gpus={self.sim_gpus}", "--sharing=timeslice",
            f"--device-plugin-dir={DEVICE_PLUGIN_DIR}", f"--pod-resources-socket={self.pod_resources_socket}",
            f"--node-name={NODE_NAME}", f"--kubeconfig={self.kubeconfig('tensorai-device-plugin')}",
            "--metrics-port=0", "--inventory-interval=30", "--log-level=DEBUG"))
        # Registered with kubelet: before that kubelet fails every GPU pod's admission ("no healthy
        # devices"), while the Node's allocatable can still show the previous plugin's devices.
        process.wait_for_line(r"registered tensor\.ai/vgpu-milli with kubelet", START_TIMEOUT_S)
        wait_until("kubelet to advertise tensor.ai/vgpu-milli", lambda: self.kubectl(
            "get", "node", NODE_NAME, "-o", r"jsonpath={.status.allocatable.tensor\.ai/vgpu-milli}") not in ("", "0"),
            START_TIMEOUT_S, 0.3)
        return process

    def start_extender(self) -> ManagedProcess:
        process = self._start("extender", module_command(
            "tensorai.scheduler.cli", "--address=127.0.0.1", f"--port={self.ports['extender']}",
            "--metrics-address=127.0.0.1", f"--metrics-port={self.ports['extender-metrics']}",
            f"--kubeconfig={self.kubeconfig('tensorai-scheduler')}", "--policy=tensorai",
            "--node-stale-seconds=120", f"--log-level={self.extender_log_level}"))
        self._wait_healthy("extender", f"http://127.0.0.1:{self.ports['extender']}/readyz")
        return process

    def start_webhook(self) -> ManagedProcess:
        process = self._start("webhook", module_command(
            "tensorai.scheduler.webhook_cli", "--address=127.0.0.1", f"--port={self.ports['webhook']}",
            "--self-signed", "--patch-ca-bundle", "--service-name=tensorai-webhook", f"--namespace={NAMESPACE}",
            "--webhook-config-name=tensorai-vgpu", f"--scheduler-name={SCHEDULER_NAME}",
            f"--kubeconfig={self.kubeconfig('tensorai-webhook')}", "--log-level=INFO"))
        self._wait_healthy("webhook", f"https://127.0.0.1:{self.ports['webhook']}/healthz")
        wait_until("the webhook's caBundle", lambda: self.kubectl(
            "get", "mutatingwebhookconfiguration", "tensorai-vgpu", "-o",
            "jsonpath={.webhooks[0].clientConfig.caBundle}"), START_TIMEOUT_S, 0.3)
        return process

    # ---- what tests read -----------------------------------------------------------------------
    def checkpoint(self) -> dict[str, Any]:
        """kubelet's device-manager checkpoint: which device IDs each pod's containers hold."""
        try:
            return json.loads(CHECKPOINT.read_text()).get("Data") or {}
        except (OSError, ValueError):
            return {}

    def container_log(self, namespace: str, pod: str, uid: str, container: str) -> str:
        """The container's first log file, as kubelet wrote it (`pods/log` would dial the node's address)."""
        folder = self.pod_logs / f"{namespace}_{pod}_{uid}" / container
        text = ""
        for path in sorted(folder.glob("*.log")):
            text += path.read_text(errors="replace")
        return text

