"""Benchmark the device plugin over its real unix socket, the way kubelet calls it, and print a table.

Starts the real `tensorai-device-plugin` process (simulated backend, 8 GPUs x 1000 slices) against
the Kubernetes API stand-in and the stub kubelet, binds 100 pods with Assignments that fill the
node (three interchangeable classes, admitted in random order so identity swaps and reconciliation
really happen), and measures, per pod admission:
- GetPreferredAllocation latency (kubelet sends every free ID: up to 8,000 in one request);
- Allocate latency (includes the pod-identity claim);
then ListAndWatch's first message (time to first byte and size, fresh stream each time) and the
plugin process's RSS. The same again with `--no-kube` (standalone: no watch, binpack only).

    .venv/bin/python tests/benchmarks/bench_deviceplugin.py [--pods 100] [--rounds 3]

Targets (issue 2): p99 <= 5 ms per call; RSS <= 80 MiB.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from typing import Any

import grpc
import numpy as np

from tensorai.demo.kube_standin import KubeStandin
from tensorai.demo.stub_kubelet import StubKubelet
from tensorai.deviceplugin.simulated import simulated_uuid
from tensorai.proto import contract
from tensorai.proto import deviceplugin_v1beta1_pb2 as dp
from tensorai.proto import deviceplugin_v1beta1_pb2_grpc as dp_grpc
from tensorai.proto import tensorai_v1_pb2 as pb

NODE = "bench-node"
GPUS = 8
# 100 pods filling 8 x 1000 milli: 50 x 50 + 40 x 100 + 10 x 150 = 8000
CLASSES = [(150, 11400)] * 10 + [(100, 7600)] * 40 + [(50, 3800)] * 50  # largest first: first-fit packs


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def first_fit(pods: list[tuple[int, int]], uuids: list[str]) -> list[str]:
    free = dict.fromkeys(uuids, 1000)
    placement = []
    for milli, _ in pods:
        gpu = min((u for u in uuids if free[u] >= milli), key=lambda u: (free[u], uuids.index(u)))
        free[gpu] -= milli
        placement.append(gpu)
    return placement


def pod(name: str, milli: int, memory: int, gpu: str | None) -> dict[str, Any]:
    annotations = {}
    if gpu is not None:
        message = pb.Assignment(node_name=NODE, decided_at=contract.timestamp_now())
        message.containers.add(name="main").gpus.add(uuid=gpu, milli=milli, memory_mib=memory)
        annotations[contract.ANNOTATION_ASSIGNMENT] = contract.encode_assignment(message)
    return {
        "metadata": {"name": name, "namespace": "bench", "annotations": annotations},
        "spec": {"nodeName": NODE, "containers": [
            {"name": "main", "resources": {"limits": {contract.RESOURCE_VGPU_MILLI: str(milli)}}}]},
    }


def run_round(workdir: str, *, kube: bool, pods: int, seed: int) -> dict[str, Any]:
    timings: dict[str, list[float]] = defaultdict(list)
    rng = random.Random(seed)
    api = KubeStandin().start() if kube else None
    if api is not None:
        api.add_node(NODE)
    kubelet = StubKubelet(f"{workdir}/dp", pod_resources_socket=f"{workdir}/pr.sock", rng=rng,
                          observe=lambda rpc, seconds: timings[rpc].append(seconds)).start()
    command = [sys.executable, "-m", "tensorai.deviceplugin.cli", "--backend", "sim",
               "--sim-gpus", f"{GPUS}xH100:81559", "--node-name", NODE, "--device-plugin-dir", f"{workdir}/dp",
               "--pod-resources-socket", f"{workdir}/pr.sock", "--metrics-port", "0", "--log-level", "WARNING"]
    command += ["--kubeconfig", api.kubeconfig_path] if api is not None else ["--no-kube"]
    process = subprocess.Popen(command)
    try:
        if not kubelet.wait_for_registration(1, 60) or not kubelet.wait_for(lambda d: len(d) == GPUS * 1000, 30):
            raise RuntimeError("plugin did not register")
        uuids = [simulated_uuid(NODE, index) for index in range(GPUS)]
        shapes = CLASSES[:pods]
        placement = first_fit(shapes, uuids)
        order = list(range(len(shapes)))
        if api is not None:
            for index in order:
                api.add_pod(pod(f"p{index}", *shapes[index], placement[index]))
        rng.shuffle(order)
        time.sleep(1.0 if api is not None else 0.0)  # let the plugin's watch list the pods
        for index in order:
            name = f"p{index}"
            body = api.get_object("pods", name, "bench") if api is not None else pod(name, *shapes[index], None)
            kubelet.admit_pod(body)
        # ListAndWatch: a fresh stream each time, as after a kubelet restart
        socket_path = os.path.join(workdir, "dp", kubelet.registrations[0].endpoint)
        channel = grpc.insecure_channel(f"unix://{socket_path}")
        stub = dp_grpc.DevicePluginStub(channel)
        stub.GetDevicePluginOptions(dp.Empty(), timeout=10)
        for _ in range(20):
            started = time.perf_counter()
            stream = stub.ListAndWatch(dp.Empty())
            first = next(stream)
            timings["ListAndWatch first message"].append(time.perf_counter() - started)
            timings["ListAndWatch bytes"].append(first.ByteSize())
            stream.cancel()
        channel.close()
        time.sleep(1.0)  # let reconciliation and annotation writes settle before reading RSS
        timings["rss"].append(rss_mib(process.pid))
        return timings
    finally:
        process.terminate()
        process.wait(timeout=20)
        kubelet.stop()
        if api is not None:
            api.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=100, help="pods admitted per round (<= 100)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per mode (fresh plugin each)")
    args = parser.parse_args(argv)
    rows = []
    for kube in (True, False):
        merged: dict[str, list[float]] = defaultdict(list)
        for round_ in range(args.rounds):
            workdir = tempfile.mkdtemp(prefix="dpbench", dir="/tmp")
            try:
                for key, values in run_round(workdir, kube=kube, pods=min(args.pods, 100), seed=round_).items():
                    merged[key].extend(values)
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
        mode = f"kube, {min(args.pods, 100)} pods" if kube else "standalone"
        for rpc in ("GetPreferredAllocation", "Allocate", "ListAndWatch first message"):
            values = np.array(merged[rpc]) * 1000
            rows.append((mode, rpc + " (ms)", len(values), np.percentile(values, 50), np.percentile(values, 99)))
        size = np.array(merged["ListAndWatch bytes"]) / 1024
        rows.append((mode, "ListAndWatch first message (KiB)", len(size), np.median(size), size.max()))
        rss = np.array(merged["rss"])
        rows.append((mode, "plugin RSS after admissions (MiB)", len(rss), np.median(rss), rss.max()))
    print(f"\nmachine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}")
    print(f"{GPUS} simulated GPUs x 1000 slices; real plugin process over unix sockets; "
          "p99 column = max for sizes/RSS\n")
    print(f"| {'mode':<16} | {'measure':<34} | {'n':>4} | {'p50':>9} | {'p99':>9} |")
    print(f"|{'-' * 18}|{'-' * 36}|{'-' * 6}|{'-' * 11}|{'-' * 11}|")
    for mode, name, count, p50, p99 in rows:
        print(f"| {mode:<16} | {name:<34} | {count:>4} | {p50:>9.2f} | {p99:>9.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
