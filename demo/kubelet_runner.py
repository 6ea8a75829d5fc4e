"""What kubelet does with a bound pod in the demo: admit it through the device plugin, run it, report its phase.

Admission is the node's StubKubelet doing GetPreferredAllocation then Allocate over the real v1beta1
gRPC API. The "container" is a `tensorai-worker` process whose environment carries exactly the
variables Allocate returned (plus NUMBA_ENABLE_CUDASIM=1, because there is no GPU), so the worker
finds its share the way it would inside a pod. The pod's phase goes to the stand-in through the
status subresource, as kubelet reports it; a finished pod's devices are released.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from tensorai.demo.processes import ProcessGroup, module_command
from tensorai.demo.state import FAILED, RUNNING, SUCCEEDED, DemoState, GpuShare
from tensorai.demo.stub_kubelet import AdmissionError, StubKubelet
from tensorai.proto import contract

ADMIT_RETRY_S = 15.0  # the plugin may not have seen the bind on its pod watch yet; kubelet retries too
WORKER_TIMEOUT_S = 120.0


class KubeletRunner:
    """Runs every bound pod of the demo on its node, one thread per pod (kubelet's pod workers)."""

    def __init__(self, kubelets: dict[str, StubKubelet], api_client: Any, processes: ProcessGroup,
                 state: DemoState, out_dir: Path, on_finished: Callable[[], None]) -> None:
        self._kubelets = kubelets
        self._core = client.CoreV1Api(api_client)
        self._processes = processes
        self._state = state
        self._out_dir = out_dir
        self._on_finished = on_finished
        self._threads: list[threading.Thread] = []
        self.admissions: list[dict[str, Any]] = []  # what the stub kubelets allocated, for the summary
        self._stop = threading.Event()

    def pod_bound(self, pod: dict[str, Any], node: str) -> None:
        thread = threading.Thread(target=self._run_pod, args=(pod["metadata"].get("namespace", "default"),
                                                              pod["metadata"]["name"], node),
                                  name=f"kubelet-{pod['metadata']['name']}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10.0)

    def _set_phase(self, namespace: str, name: str, phase: str, reason: str = "", message: str = "") -> None:
        status: dict[str, Any] = {"phase": phase}
        if reason:
            status.update(reason=reason, message=message)
        try:
            self._core.patch_namespaced_pod_status(name, namespace, {"status": status}, _preload_content=False)
        except ApiException as error:
            self._state.log(f"{namespace}/{name}: cannot report phase {phase}: HTTP {error.status}", "fail")

    def _fail(self, key: str, namespace: str, name: str, reason: str, message: str) -> None:
        state = self._state
        with state.lock:
            run = state.pods[key]
            run.phase = FAILED
            run.reason = f"{reason}: {message}"
            run.finished_s = state.now()
        state.log(f"{key} failed: {reason}: {message}", "fail")
        self._set_phase(namespace, name, "Failed", reason, message)
        self._on_finished()

    def _admit(self, kubelet: StubKubelet, key: str, namespace: str, name: str) -> tuple[dict, dict[str, Any]]:
        deadline = time.monotonic() + ADMIT_RETRY_S
        while True:
            pod = json.loads(self._core.read_namespaced_pod(name, namespace, _preload_content=False).data)
            try:
                return pod, kubelet.admit_pod(pod)
            except AdmissionError as error:
                if time.monotonic() > deadline or self._stop.is_set():
                    raise
                self._state.log(f"{key}: admission retry after {error.code}: {error.message[:120]}")
                time.sleep(0.5)

    def _run_pod(self, namespace: str, name: str, node: str) -> None:
        try:
            self._admit_and_run(namespace, name, node)
        except Exception as error:  # an API or gRPC surprise fails this pod visibly, never the thread silently
            self._kubelets[node].remove_pod(namespace, name)
            self._fail(f"{namespace}/{name}", namespace, name, "KubeletError", f"{type(error).__name__}: {error}")

    def _admit_and_run(self, namespace: str, name: str, node: str) -> None:
        key = f"{namespace}/{name}"
        state = self._state
        kubelet = self._kubelets[node]
        try:
            pod, admitted = self._admit(kubelet, key, namespace, name)
        except AdmissionError as error:
            self._fail(key, namespace, name, "UnexpectedAdmissionError", f"{error.code}: {error.message}")
            return
        annotations = pod["metadata"].get("annotations") or {}
        shares: list[GpuShare] = []
        try:
            assignment = contract.decode_assignment(annotations.get(contract.ANNOTATION_ASSIGNMENT, ""))
            shares = [GpuShare(share.uuid, share.milli, share.memory_mib)
                      for container in assignment.containers for share in container.gpus]
        except contract.ContractError as error:
            state.log(f"{key}: bound without a readable Assignment: {error}", "fail")
        container = next(iter(admitted.values()), None)
        if container is None:
            kubelet.remove_pod(namespace, name)
            self._fail(key, namespace, name, "NoGPU", "the pod asks for no tensor.ai/vgpu-milli")
            return
        envs = dict(container.response.envs)
        with state.lock:
            run = state.pods[key]
            run.uid = pod["metadata"].get("uid", "")
            run.shares = shares
            run.device_ids = list(container.device_ids)
            run.preferred_ids = list(container.preferred)
            run.allocate_env = envs
        self.admissions.append({"namespace": namespace, "pod": name, "node": node, "container": container.name,
                                "device_ids": list(container.device_ids), "preferred": list(container.preferred),
                                "envs": envs})
        gpus = ",".join(sorted({contract.gpu_of_device_id(d) for d in container.device_ids}))
        state.log(f"{key} admitted on {node}: {len(container.device_ids)} slices of {gpus}, "
                  f"{contract.ENV_VGPU_MEMORY_MIB}={envs.get(contract.ENV_VGPU_MEMORY_MIB)}", "ok")
        self._run_worker(key, namespace, name, envs, kubelet)

    def _run_worker(self, key: str, namespace: str, name: str, envs: dict[str, str], kubelet: StubKubelet) -> None:
        state = self._state
        run = state.pods[key]
        report_path = self._out_dir / "workers" / f"{namespace}-{name}.json"
        report_path.parent.mkdir(parents=True, exist_ok=True)
        environment = {**os.environ, **envs, "NUMBA_ENABLE_CUDASIM": "1"}
        worker = self._processes.start(
            f"worker {key}",
            module_command("tensorai.kernels.worker", "--job", str(run.spec.job), "--report-json", str(report_path),
                           "--metrics-port", "0", "--seed", str(abs(hash(key)) % 10_000)),
            self._out_dir / "logs" / f"worker-{namespace}-{name}.log",
            env=environment,
        )
        with state.lock:
            run.phase = RUNNING
            run.started_s = state.now()
        self._set_phase(namespace, name, "Running")
        deadline = time.monotonic() + WORKER_TIMEOUT_S
        while worker.running() and time.monotonic() < deadline and not self._stop.is_set():
            time.sleep(0.1)
        exit_code = worker.stop(timeout_s=3.0)
        report = None
        if report_path.is_file():
            try:
                report = json.loads(report_path.read_text())
            except ValueError:
                report = None
        kubelet.remove_pod(namespace, name)
        with state.lock:
            run.worker_exit = exit_code
            run.worker_report = report
            run.finished_s = state.now()
            run.phase = SUCCEEDED if exit_code == 0 else FAILED
            if exit_code != 0:
                run.reason = f"worker exited with {exit_code}; last output: {worker.tail(3)}"
        if exit_code == 0:
            peak = (report or {}).get("peak_memory_used_bytes")
            budget = (report or {}).get("memory_budget_bytes")
            state.log(f"{key} succeeded: peak {peak} B of a {budget} B budget", "ok")
            self._set_phase(namespace, name, "Succeeded")
        else:
            state.log(f"{key} failed: {run.reason}", "fail")
            self._set_phase(namespace, name, "Failed", "Error", run.reason)
        self._on_finished()
