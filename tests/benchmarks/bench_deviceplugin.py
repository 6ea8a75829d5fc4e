"""Benchmark the device plugin over its real unix socket, the way kubelet calls it, and print a table.

Starts the real `tensorai-device-plugin` process (simulated backend, 8 GPUs x 1000 slices) against
the Kubernetes API stand-in and the stub kubelet, binds 100 pods with Assignments that fill the
node (three interchangeable classes, admitted in random order so identity swaps and reconciliation
really happen), and measures, per pod admission:
- GetPreferredAllocation latency (kubelet sends every free ID: up to 8,000 in one request);
- Allocate latency (includes the pod-identity claim);
then ListAndWatch's first message (time to first byte and size, fresh stream each time) and the
plugin process's RSS. The same again with `--no-kube` (standalone: no watch, binpack only).

The API stand-in runs in its own process (a real API server is not in kubelet's process either: in
the bench's process its watch and patch handling would steal the stub kubelet's GIL and be counted as
plugin latency). The "transport floor" rows send the same messages to a do-nothing DevicePlugin
server in its own process: what the Python stub kubelet and gRPC cost before the plugin does anything
(a Go kubelet serialises the 8,000 IDs far faster than the stub does). The "in-process" row is the
plugin's own share: the real servicer called in the benchmark's process with the same request bytes,
from bytes in to the serialized reply, no transport.

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
from concurrent import futures
from typing import Any

import grpc
import numpy as np

from tensorai.demo.stub_kubelet import StubKubelet
from tensorai.deviceplugin.allocations import AllocationBook
from tensorai.deviceplugin.backends import open_backend
from tensorai.deviceplugin.footprint import keep_freed_buffers
from tensorai.deviceplugin.health import HealthTracker
from tensorai.deviceplugin.service import DevicePluginServicer, VGPUManager
from tensorai.deviceplugin.sharing import SharingPolicy
from tensorai.deviceplugin.simulated import simulated_uuid
from tensorai.deviceplugin.slices import SliceTable
from tensorai.deviceplugin.wireids import WireRequest
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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


class StandinProcess:
    """The Kubernetes API stand-in as its own process, driven through the real kubernetes client."""

    def __init__(self, workdir: str) -> None:
        from kubernetes import client, config

        self.kubeconfig_path = f"{workdir}/kubeconfig"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tensorai.demo.kube_standin", "--kubeconfig", self.kubeconfig_path],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        assert self.process.stdout is not None
        if not self.process.stdout.readline():  # the URL: serving and kubeconfig written
            raise RuntimeError("the API stand-in did not start")
        api_client = config.new_client_from_config(config_file=self.kubeconfig_path)
        self.core = client.CoreV1Api(api_client)
        self.serialize = api_client.sanitize_for_serialization

    def add_node(self, name: str) -> None:
        self.core.create_node({"metadata": {"name": name}})

    def add_pod(self, body: dict[str, Any]) -> None:
        self.core.create_namespaced_pod(body["metadata"]["namespace"], body)

    def get_pod(self, name: str, namespace: str) -> dict[str, Any]:
        return self.serialize(self.core.read_namespaced_pod(name, namespace))

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=20)


class FloorServicer(dp_grpc.DevicePluginServicer):
    """Answers like the plugin in shape only: the first `allocation_size` candidates, an empty Allocate."""

    def GetPreferredAllocation(self, request: dp.PreferredAllocationRequest, context: Any) -> Any:
        wanted = request.container_requests[0]
        ids = wanted.available_deviceIDs[: wanted.allocation_size]
        return dp.PreferredAllocationResponse(container_responses=[dp.ContainerPreferredAllocationResponse(
            deviceIDs=ids)])

    def Allocate(self, request: dp.AllocateRequest, context: Any) -> Any:
        response = dp.ContainerAllocateResponse()
        response.envs[contract.ENV_VISIBLE_DEVICES] = "GPU-floor"
        return dp.AllocateResponse(container_responses=[response])


def serve_floor(socket_path: str) -> int:
    """Run the do-nothing server until killed (the benchmark starts this as its own process)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    dp_grpc.add_DevicePluginServicer_to_server(FloorServicer(), server)
    server.add_insecure_port(f"unix://{socket_path}")
    server.start()
    print("serving", flush=True)
    server.wait_for_termination()
    return 0


def floor_round(workdir: str, *, pods: int, seed: int) -> dict[str, list[float]]:
    """The same GetPreferredAllocation/Allocate messages as a round, against the do-nothing server."""
    timings: dict[str, list[float]] = defaultdict(list)
    socket_path = f"{workdir}/floor.sock"
    process = subprocess.Popen([sys.executable, __file__, "--serve-floor", socket_path], stdout=subprocess.PIPE,
                               text=True)
    try:
        assert process.stdout is not None and process.stdout.readline()
        channel = grpc.insecure_channel(f"unix://{socket_path}")
        stub = dp_grpc.DevicePluginStub(channel)
        rng = random.Random(seed)
        free = [contract.device_id(simulated_uuid(NODE, gpu), index) for gpu in range(GPUS) for index in range(1000)]
        for milli, _ in CLASSES[:pods]:
            rng.shuffle(free)
            request = dp.PreferredAllocationRequest(container_requests=[
                dp.ContainerPreferredAllocationRequest(available_deviceIDs=free, allocation_size=milli)])
            started = time.perf_counter()
            answer = stub.GetPreferredAllocation(request, timeout=30)
            timings["GetPreferredAllocation"].append(time.perf_counter() - started)
            chosen = list(answer.container_responses[0].deviceIDs)
            started = time.perf_counter()
            stub.Allocate(dp.AllocateRequest(container_requests=[dp.ContainerAllocateRequest(devices_ids=chosen)]),
                          timeout=30)
            timings["Allocate"].append(time.perf_counter() - started)
            chosen_set = set(chosen)
            free = [device for device in free if device not in chosen_set]
        channel.close()
        return timings
    finally:
        process.terminate()
        process.wait(timeout=20)


class CallContext:
    """What the servicer uses of gRPC's call context when it is called in this process."""

    def __init__(self) -> None:
        self.callbacks: list[Any] = []

    def add_callback(self, callback: Any) -> bool:
        self.callbacks.append(callback)
        return True

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise RuntimeError(f"{code}: {details}")


def handler_round(*, pods: int, seed: int) -> dict[str, list[float]]:
    """The plugin's own share of GetPreferredAllocation: the real servicer called in this process with
    the bytes kubelet sends (standalone policy, allocations recorded), timed from the bytes to the
    serialized reply - what the plugin process does besides gRPC transport."""
    timings: dict[str, list[float]] = defaultdict(list)
    keep_freed_buffers()  # glibc settings as in the plugin process (cli.main); this mode runs last
    table = SliceTable(open_backend("sim", sim_gpus=f"{GPUS}xH100:81559", node_name=NODE).gpus())
    manager = VGPUManager(table, HealthTracker(table.uuids), SharingPolicy(), AllocationBook())
    servicer = DevicePluginServicer(manager)
    rng = random.Random(seed)
    free = [device for uuid in table.uuids for device in table.device_ids(uuid)]
    for milli, _ in CLASSES[:pods]:
        rng.shuffle(free)
        request = dp.PreferredAllocationRequest(container_requests=[
            dp.ContainerPreferredAllocationRequest(available_deviceIDs=free, allocation_size=milli)])
        raw = request.SerializeToString()
        context = CallContext()
        started = time.perf_counter()
        answer = servicer.GetPreferredAllocation(WireRequest(raw), context).SerializeToString()
        timings["GetPreferredAllocation handler"].append(time.perf_counter() - started)
        for callback in context.callbacks:
            callback()
        chosen = list(dp.PreferredAllocationResponse.FromString(answer).container_responses[0].deviceIDs)
        manager.allocate([chosen])
        chosen_set = set(chosen)
        free = [device for device in free if device not in chosen_set]
    return timings


def run_round(workdir: str, *, kube: bool, pods: int, seed: int) -> dict[str, Any]:
    timings: dict[str, list[float]] = defaultdict(list)
    rng = random.Random(seed)
    api = StandinProcess(workdir) if kube else None
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
        bodies = [api.get_pod(f"p{index}", "bench") if api is not None else pod(f"p{index}", *shapes[index], None)
                  for index in order]
        plugin_cpu = cpu_seconds(process.pid)
        api_cpu = cpu_seconds(api.process.pid) if api is not None else 0.0
        for body in bodies:
            kubelet.admit_pod(body)
        time.sleep(0.5)  # the reconciliation and annotation writes the last admissions caused
        timings["plugin CPU per admission"].append((cpu_seconds(process.pid) - plugin_cpu) / len(bodies))
        if api is not None:
            timings["API stand-in CPU per admission"].append((cpu_seconds(api.process.pid) - api_cpu) / len(bodies))
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
    parser.add_argument("--serve-floor", metavar="SOCKET", help=argparse.SUPPRESS)  # internal: the floor server
    args = parser.parse_args(argv)
    if args.serve_floor:
        return serve_floor(args.serve_floor)
    rows = []
    pods = min(args.pods, 100)
    load_before = os.getloadavg()
    for mode in (f"kube, {pods} pods", "standalone", "transport floor", "in-process"):
        merged: dict[str, list[float]] = defaultdict(list)
        for round_ in range(args.rounds):
            workdir = tempfile.mkdtemp(prefix="dpbench", dir="/tmp")
            try:
                if mode == "in-process":
                    timings = handler_round(pods=pods, seed=round_)
                elif mode == "transport floor":
                    timings = floor_round(workdir, pods=pods, seed=round_)
                else:
                    timings = run_round(workdir, kube=mode != "standalone", pods=pods, seed=round_)
                for key, values in timings.items():
                    merged[key].extend(values)
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
        for rpc in ("GetPreferredAllocation", "GetPreferredAllocation handler", "Allocate",
                    "ListAndWatch first message"):
            if merged[rpc]:
                values = np.array(merged[rpc]) * 1000
                rows.append((mode, rpc + " (ms)", len(values), np.percentile(values, 50), np.percentile(values, 99)))
        for name in ("plugin CPU per admission", "API stand-in CPU per admission"):
            if merged[name]:
                values = np.array(merged[name]) * 1000
                rows.append((mode, name + " (ms)", len(values), np.median(values), values.max()))
        if merged["ListAndWatch bytes"]:
            size = np.array(merged["ListAndWatch bytes"]) / 1024
            rows.append((mode, "ListAndWatch first message (KiB)", len(size), np.median(size), size.max()))
        if merged["rss"]:
            rss = np.array(merged["rss"])
            rows.append((mode, "plugin RSS after admissions (MiB)", len(rss), np.median(rss), rss.max()))
    load_after = os.getloadavg()
    print(f"\nmachine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}; load average (1 min) {load_before[0]:.2f} before, "
          f"{load_after[0]:.2f} after")
    print(f"{GPUS} simulated GPUs x 1000 slices; real plugin process over unix sockets; "
          "p99 column = max for sizes, RSS and CPU\n")
    print(f"| {'mode':<16} | {'measure':<35} | {'n':>4} | {'p50':>9} | {'p99':>9} |")
    print(f"|{'-' * 18}|{'-' * 37}|{'-' * 6}|{'-' * 11}|{'-' * 11}|")
    for mode, name, count, p50, p99 in rows:
        print(f"| {mode:<16} | {name:<35} | {count:>4} | {p50:>9.2f} | {p99:>9.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
