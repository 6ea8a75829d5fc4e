#!/usr/bin/env python3
"""Run the device plugin's real NVML path on this machine's GPUs and print what it found.

    python tests/benchmarks/gpu_node_check.py     # on a machine with an NVIDIA driver

What CI cannot show (it has no GPU): the `nvml` backend's inventory and reserve, a live usage and
per-process reading while a real CUDA worker holds memory, the XID event wait, and the whole plugin
process (`--backend nvml --no-kube`) registering with a stub kubelet that speaks the real v1beta1
API, advertising 1000 slices per GPU, admitting a 250-milli container, exporting metrics, and
removing its socket on SIGTERM. Each step prints one line; any failure exits non-zero.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

from tensorai.demo.stub_kubelet import StubKubelet
from tensorai.deviceplugin.backends import open_backend

WORKER_JOB = "operations:\n  - {op: matmul, shapes: [[2048, 2048], [2048, 2048]]}\n"


def check(condition: bool, what: str) -> None:
    print(f"{'ok  ' if condition else 'FAIL'} {what}", flush=True)
    if not condition:
        raise SystemExit(1)


def backend_readings(workdir: str) -> int:
    """Inventory, usage and processes through the backend itself, with a worker holding GPU memory;
    returns how many GPUs it saw."""
    backend = open_backend("nvml")
    try:
        gpus = backend.gpus()
        check(bool(gpus), f"nvml backend sees {len(gpus)} GPU(s)")
        for gpu in gpus:
            print(f"     GPU {gpu.index} {gpu.uuid} {gpu.model!r} memory {gpu.memory_mib} MiB, "
                  f"reserved {gpu.reserved_mib} MiB, NUMA {gpu.numa_node}, minor {gpu.minor_number}")
            check(0 <= gpu.reserved_mib < gpu.memory_mib, "reserve is below total memory")
            check(backend.probe(gpu.uuid), "probe says healthy")
        job = os.path.join(workdir, "job.yaml")
        with open(job, "w", encoding="utf-8") as handle:
            handle.write(WORKER_JOB)
        env = dict(os.environ, NVIDIA_VISIBLE_DEVICES=gpus[0].uuid, TENSORAI_VGPU_MILLI="1000",
                   TENSORAI_VGPU_MEMORY_MIB="4096")
        worker = subprocess.Popen([sys.executable, "-m", "tensorai.kernels.worker", "--job", job, "--loop",
                                   "--duration-s", "20", "--no-throttle"], env=env)
        try:
            seen = []
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not seen:
                time.sleep(1)
                seen = [p for p in backend.processes(gpus[0].uuid) if p.pid == worker.pid]
            check(bool(seen), f"worker pid {worker.pid} seen by nvml processes(): "
                              f"{seen[0].memory_used_mib if seen else '-'} MiB")
            usage = backend.usage(gpus[0].uuid)
            print(f"     usage while the worker runs: {usage}")
            check(usage.memory_used_mib > 0, "usage reports memory in use")
        finally:
            worker.terminate()
            worker.wait(timeout=60)
        started = time.monotonic()
        events = backend.wait_for_events(0.5)
        check(isinstance(events, list), f"XID event wait returns ({len(events)} events in "
                                        f"{time.monotonic() - started:.2f} s)")
        return len(gpus)
    finally:
        backend.close()


def plugin_process(workdir: str, gpu_count: int) -> None:
    """The plugin as a process against a stub kubelet: registration, slices, admission, metrics, SIGTERM."""
    plugin_dir = os.path.join(workdir, "dp")
    metrics_port = 19400
    with StubKubelet(plugin_dir, pod_resources_socket=os.path.join(workdir, "pr.sock")) as kubelet:
        process = subprocess.Popen(
            [sys.executable, "-m", "tensorai.deviceplugin.cli", "--backend", "nvml", "--node-name", "gpu-node",
             "--no-kube", "--device-plugin-dir", plugin_dir, "--metrics-port", str(metrics_port),
             "--pod-resources-socket", os.path.join(workdir, "pr.sock")],
        )
        try:
            check(kubelet.wait_for_registration(1, 60), "plugin registered with the stub kubelet")
            check(kubelet.wait_for(lambda devices: len(devices) == 1000 * gpu_count, 20),
                  f"ListAndWatch advertises {1000 * gpu_count} slices ({kubelet.first_list_bytes} bytes first list)")
            admitted = kubelet.admit("default", "quarter", [("main", 250)])["main"]
            envs = dict(admitted.response.envs)
            print(f"     Allocate env: {envs}")
            check(envs.get("TENSORAI_VGPU_MILLI") == "250", "Allocate gives the container 250 milli")
            check(envs.get("NVIDIA_VISIBLE_DEVICES", "").startswith("GPU-"), "pinned to a GPU UUID")
            time.sleep(2)
            body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
            ours = [line for line in body.splitlines() if line.startswith("tensorai_") and "gpu" in line]
            print("\n".join(f"     {line}" for line in ours[:30]))
            check(any(line.startswith("tensorai_gpu_memory_total_bytes") for line in ours),
                  "metrics export per-GPU memory total")
            socket_path = os.path.join(plugin_dir, kubelet.registrations[0].endpoint)
            process.send_signal(signal.SIGTERM)
            check(process.wait(timeout=30) == 0 and not os.path.exists(socket_path), "SIGTERM removes the socket")
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="gpu-node-check-") as workdir:
        plugin_process(workdir, backend_readings(workdir))
    print("gpu node check: all steps passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
