"""Benchmark the extender over HTTP, the way kube-scheduler calls it, and print a table.

For each cluster size (default 1,000 and 5,000 nodes x 8 GPUs, 20,000 running pods holding
fractional and whole GPUs) it writes a cluster file, starts the real `tensorai-extender
--cluster-file` process, and from this process (persistent HTTP/1.1 connections, like the Go client):
- latency p50/p99 of filter, prioritize and bind, each pod going filter -> prioritize -> bind on
  the best-scored feasible node, with ALL nodes in NodeNames (nodeCacheCapable: true) - the worst
  case; kube-scheduler usually sends fewer (percentageOfNodesToScore);
- the same with kube-scheduler's default node sample per request (percentageOfNodesToScore:
  max(100, N x max(5, 50 - N/125) %) nodes, rotating), which is what a real scheduler sends;
- sustained pods/s through filter + prioritize + bind (one client, like kube-scheduler's serial
  cycle; and 4 concurrent clients), and the server's CPU ms per pod (meaningful on a loaded machine).

What the client does (it shares the machine's cores with the server, so its CPU is not free): each
pod's JSON and each node list are encoded once before the clock starts (kube-scheduler's encoding
is its own CPU, not the extender's); prioritize's NodeNames are filter's answer passed on as the
bytes the extender sent; prioritize's answer is decoded to pick the best node; responses are read
with a minimal HTTP/1.1 reader on a keep-alive socket. Every pod still makes the three full HTTP
round trips, and a pod counts only when bind answered `{"Error":""}`.

    .venv/bin/python tests/benchmarks/bench_extender.py [--nodes 1000 5000] [--pods 20000] [--measure 300]

Targets (issue 3): p99 <= 10 ms per verb at 5,000 nodes; >= 500 pods/s at 1,000 nodes.
"""

from __future__ import annotations

import argparse
import json
import operator
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from test_extender_support import H100_MIB, RESERVED_MIB, gpu_uuid, node, pod

from tensorai.proto import contract

# running-pod mix: mostly shares, some whole GPUs; 20,000 of them fill ~75 % of 1,000 x 8 GPUs
SHAPES_MILLI = (100, 250, 250, 250, 500, 100, 250, 250, 500, 1000)
USABLE_MIB = H100_MIB - RESERVED_MIB  # a share's memory in an Assignment: its part of the GPU's usable memory


def build_cluster(nodes: int, running_pods: int, seed: int) -> dict:
    """A List of nodes (8 GPUs each) and running pods with Assignments that fit (first fit, random order)."""
    rng = random.Random(seed)
    items: list[dict] = [node(f"node-{i:05d}", 8) for i in range(nodes)]
    free = np.full((nodes, 8), contract.MILLI_PER_GPU, dtype=np.int32)
    placed = 0
    attempts = 0
    while placed < running_pods and attempts < running_pods * 4:
        attempts += 1
        milli = rng.choice(SHAPES_MILLI)
        row = rng.randrange(nodes)
        whole = milli // contract.MILLI_PER_GPU
        if whole:
            slots = np.flatnonzero(free[row] == contract.MILLI_PER_GPU)[:whole]
            if len(slots) < whole:
                continue
            shares = [(int(slot), contract.MILLI_PER_GPU) for slot in slots]
        else:
            slots = np.flatnonzero(free[row] >= milli)
            if not len(slots):
                continue
            shares = [(int(slots[0]), milli)]
        name = f"node-{row:05d}"
        running = pod(f"run-{placed}", milli, node_name=name, phase="Running", namespace=f"team-{placed % 20}")
        assignment = contract.pb.Assignment(pod_uid=running["metadata"]["uid"], node_name=name)
        container = assignment.containers.add(name="c0")
        for slot, share in shares:
            free[row, slot] -= share
            container.gpus.add(uuid=gpu_uuid(name, slot), milli=share, memory_mib=USABLE_MIB * share // 1000)
        running["metadata"]["annotations"][contract.ANNOTATION_ASSIGNMENT] = contract.encode_assignment(assignment)
        items.append(running)
        placed += 1
    return {"apiVersion": "v1", "kind": "List", "items": items}


class Client:
    """One persistent HTTP/1.1 connection, lean on the client's CPU.

    The client shares this machine's cores with the extender, so every millisecond it spends is one
    the server does not get. It sends bodies it encoded once (`post_raw`) and parses responses with
    a minimal reader (status line, Content-Length, body); it is still plain HTTP/1.1 with keep-alive,
    as kube-scheduler's Go client speaks it.
    """

    def __init__(self, port: int) -> None:
        self.socket = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = b""

    def post_raw(self, path: str, data: bytes) -> tuple[float, bytes]:
        """POST pre-encoded JSON; returns (seconds, raw response body); raises on a non-200 answer."""
        head = f"POST {path} HTTP/1.1\r\nHost: extender\r\nContent-Type: application/json\r\n"
        started = time.perf_counter()
        self.socket.sendall(f"{head}Content-Length: {len(data)}\r\n\r\n".encode() + data)
        status, payload = self._response()
        elapsed = time.perf_counter() - started
        if status != 200:
            raise RuntimeError(f"{path}: HTTP {status} {payload[:200]!r}")
        return elapsed, payload

    def post(self, path: str, body: object) -> tuple[float, object]:
        """POST a JSON value; returns (seconds, decoded answer)."""
        elapsed, payload = self.post_raw(path, json.dumps(body).encode())
        return elapsed, json.loads(payload)

    def _response(self) -> tuple[int, bytes]:
        buffer = self._buffer
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            buffer += self._receive()
        head = buffer[:end].decode("latin-1")
        status = int(head[9:12])
        length = 0
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        while len(buffer) < end + 4 + length:
            buffer += self._receive()
        self._buffer = buffer[end + 4 + length :]
        return status, buffer[end + 4 : end + 4 + length]

    def _receive(self) -> bytes:
        chunk = self.socket.recv(1 << 18)
        if not chunk:
            raise ConnectionError("extender closed the connection")
        return chunk


class PodRequests:
    """The extender calls of one pod, encoded the way kube-scheduler would send them.

    The pod JSON and each node list are encoded once (kube-scheduler's encoding is its own CPU, not
    the extender's); prioritize's NodeNames are filter's answer passed on as the bytes the extender
    sent, which is exactly what a scheduler re-encoding the decoded list would send.
    """

    def __init__(self, tag: str, milli: int) -> None:
        pending = pod(tag, milli, namespace="bench")
        pending["metadata"]["resourceVersion"] = "1"  # as every pod read from the API has
        self.tag = tag
        self.uid = pending["metadata"]["uid"]
        self._pod = json.dumps(pending, separators=(",", ":")).encode()  # compact, as Go's encoding/json

    def filter_body(self, encoded_names: bytes) -> bytes:
        return b'{"Pod":' + self._pod + b',"Nodes":null,"NodeNames":' + encoded_names + b"}"

    def prioritize_body(self, filter_answer: bytes) -> bytes | None:
        """None when filter kept no node."""
        start = filter_answer.find(b'"NodeNames":[')
        end = filter_answer.find(b"]", start)
        if start < 0 or end < 0 or b'"Error":""' not in filter_answer:
            raise RuntimeError(f"unexpected filter answer {filter_answer[:200]!r}")
        kept = filter_answer[start + len(b'"NodeNames":') : end + 1]
        if kept == b"[]":
            return None
        return b'{"Pod":' + self._pod + b',"Nodes":null,"NodeNames":' + kept + b"}"

    def bind_body(self, node_name: str) -> bytes:
        return json.dumps(
            {"PodName": self.tag, "PodNamespace": "bench", "PodUID": self.uid, "Node": node_name}
        ).encode()


def best_host(prioritize_answer: bytes) -> str:
    """The node with the highest score: the one the extender gave its only 10, read from the bytes
    (decoding ~400 entries to find it would cost this shared machine ~0.07 ms per pod); without a
    10 (no feasible node) the whole answer is decoded."""
    end = prioritize_answer.find(b',"Score":10}')
    start = prioritize_answer.rfind(b'{"Host":', 0, end)
    if end < 0 or start < 0:
        return max(json.loads(prioritize_answer), key=operator.itemgetter("Score"))["Host"]
    return json.loads(prioritize_answer[start + len(b'{"Host":') : end])


class NodeLists:
    """The NodeNames kube-scheduler sends, each list encoded once: all nodes every time, or its
    default sample (percentageOfNodesToScore), each cycle resuming where the last one stopped."""

    def __init__(self, names: list[str], sample: int | None) -> None:
        self.names, self.sample = names, sample
        self._start = 0
        self._encoded: dict[int, bytes] = {}

    def next(self) -> bytes:
        start = 0
        if self.sample is not None:
            start = self._start
            self._start = (start + self.sample) % len(self.names)
        encoded = self._encoded.get(start)
        if encoded is None:
            window = self.names if self.sample is None else (self.names[start:] + self.names[:start])[: self.sample]
            encoded = self._encoded[start] = json.dumps(window, separators=(",", ":")).encode()
        return encoded


def schedule_one(client: Client, requests: PodRequests, names: bytes) -> tuple[float, float, float, bool]:
    """filter -> prioritize -> bind one pod; returns the three latencies and whether it was bound."""
    filter_s, filtered = client.post_raw("/filter", requests.filter_body(names))
    body = requests.prioritize_body(filtered)
    if body is None:
        return filter_s, 0.0, 0.0, False
    prioritize_s, scores = client.post_raw("/prioritize", body)
    bind_s, result = client.post_raw("/bind", requests.bind_body(best_host(scores)))
    return filter_s, prioritize_s, bind_s, result == b'{"Error":""}'


def pods_to_schedule(count: int, rng: random.Random, tag: str) -> list[PodRequests]:
    """Pending pods of 0.25, 0.5 and 1 GPU, encoded before any clock starts."""
    return [PodRequests(f"{tag}-{index}", rng.choice((250, 500, 1000))) for index in range(count)]


def start_extender(path: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, int]:
    """Run the real CLI on a cluster file (in `env`, default this process's); returns the process and its port."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorai.scheduler.cli",
            "--cluster-file",
            path,
            "--port",
            "0",
            "--address",
            "127.0.0.1",
            "--log-level",
            "WARNING",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    line = process.stdout.readline()
    if "serving on" not in line:
        process.kill()
        raise RuntimeError(f"extender did not start: {line!r}")
    return process, int(line.strip().rsplit(":", 1)[1])


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc), to report cost independent of machine load."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile_ms(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q)) if values else float("nan")


def sample_size(nodes: int) -> int:
    """How many feasible nodes kube-scheduler's default percentageOfNodesToScore passes on."""
    if nodes < 100:
        return nodes
    percentage = max(5, 50 - nodes // 125)
    return max(100, nodes * percentage // 100)


def measure_mode(
    port: int,
    process: subprocess.Popen,
    names: list[str],
    measure: int,
    rng: random.Random,
    sample: int | None,
    tag: str,
) -> dict:
    """Schedule `measure` pods one after another; `sample` = nodes per request (rotating like the scheduler)."""
    client = Client(port)
    lists = NodeLists(names, sample)
    pods = pods_to_schedule(measure, rng, tag)
    latencies: dict[str, list[float]] = {"filter": [], "prioritize": [], "bind": []}
    bound = 0
    cpu_before_s = process_cpu_s(process.pid)
    started = time.perf_counter()
    for requests in pods:
        filter_s, prioritize_s, bind_s, ok = schedule_one(client, requests, lists.next())
        latencies["filter"].append(filter_s)
        if ok:
            latencies["prioritize"].append(prioritize_s)
            latencies["bind"].append(bind_s)
            bound += 1
    rate = bound / (time.perf_counter() - started)
    cpu_ms = (process_cpu_s(process.pid) - cpu_before_s) * 1000 / max(measure, 1)
    async_rate = async_bind_rate(port, names, measure, rng, sample)
    return {"latencies": latencies, "rate": rate, "async_rate": async_rate, "server_cpu_ms_per_pod": cpu_ms}


def async_bind_rate(port: int, names: list[str], measure: int, rng: random.Random, sample: int | None) -> float:
    """Pods/s the way kube-scheduler drives an extender: its cycle waits for filter + prioritize, while
    each bind runs in its own goroutine (here: a pool of 4 threads with their own connections).
    A bind that lost its GPU to an earlier in-flight bind is refused and not counted."""
    from concurrent.futures import ThreadPoolExecutor

    local = threading.local()

    def bind(body: bytes) -> bool:
        if not hasattr(local, "client"):
            local.client = Client(port)
        return local.client.post_raw("/bind", body)[1] == b'{"Error":""}'

    client = Client(port)
    lists = NodeLists(names, sample)
    pods = pods_to_schedule(measure, rng, f"async-{sample}")
    futures = []
    started = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        for requests in pods:
            _, filtered = client.post_raw("/filter", requests.filter_body(lists.next()))
            body = requests.prioritize_body(filtered)
            if body is None:
                continue
            _, scores = client.post_raw("/prioritize", body)
            futures.append(pool.submit(bind, requests.bind_body(best_host(scores))))
        bound = sum(1 for future in futures if future.result())
    return bound / (time.perf_counter() - started)


def run_size(nodes: int, running_pods: int, measure: int, seed: int) -> dict:
    cluster = build_cluster(nodes, running_pods, seed)
    names = [item["metadata"]["name"] for item in cluster["items"] if item["kind"] == "Node"]
    rng = random.Random(seed + 1)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "cluster.json")
        with open(path, "w") as handle:
            json.dump(cluster, handle)
        process, port = start_extender(path)
        try:
            client = Client(port)
            everything = NodeLists(names, None)
            for requests in pods_to_schedule(20, random.Random(seed), "warm"):  # warm-up
                schedule_one(client, requests, everything.next())
            modes = {
                "all": measure_mode(port, process, names, measure, rng, None, "all"),
                "sampled": measure_mode(port, process, names, measure, rng, sample_size(nodes), "sampled"),
            }
            rate4 = concurrent_rate(port, names, measure, rng)
        finally:
            process.terminate()
            process.wait(timeout=30)
    running = sum(1 for item in cluster["items"] if item["kind"] == "Pod")
    return {
        "nodes": nodes,
        "running": running,
        "modes": modes,
        "rate4": rate4,
        "local": in_process(cluster, names, measure, seed),
    }


def in_process(cluster: dict, names: list[str], measure: int, seed: int) -> dict[str, list[float]]:
    """CPU time of the same filter/prioritize/bind calls on an ExtenderService in this process (no HTTP/JSON).

    Thread CPU time, not wall time: on a shared, loaded machine it still says what each call costs.
    """
    from tensorai.scheduler.extender import ExtenderService
    from tensorai.scheduler.view import ClusterView

    view = ClusterView(stale_seconds=0)
    view.replace("nodes", [item for item in cluster["items"] if item["kind"] == "Node"])
    view.replace("pods", [item for item in cluster["items"] if item["kind"] == "Pod"])
    view.replace("gpuquotas", [])
    service = ExtenderService(view)
    rng = random.Random(seed + 2)
    latencies: dict[str, list[float]] = {"filter": [], "prioritize": [], "bind": []}
    for index in range(measure + 20):
        pending = pod(f"local-{index}", rng.choice((250, 500, 1000)), namespace="bench")
        started = time.thread_time()
        feasible = service.filter({"Pod": pending, "Nodes": None, "NodeNames": names})["NodeNames"]
        filtered = time.thread_time()
        scores = service.prioritize({"Pod": pending, "Nodes": None, "NodeNames": feasible})
        prioritized = time.thread_time()
        best = max(scores, key=lambda entry: entry["Score"])["Host"]
        error = service.bind(
            {
                "PodName": pending["metadata"]["name"],
                "PodNamespace": "bench",
                "PodUID": pending["metadata"]["uid"],
                "Node": best,
            }
        )["Error"]
        bound = time.thread_time()
        if index >= 20 and not error:
            latencies["filter"].append(filtered - started)
            latencies["prioritize"].append(prioritized - filtered)
            latencies["bind"].append(bound - prioritized)
    return latencies


def concurrent_rate(port: int, names: list[str], total: int, rng: random.Random, clients: int = 4) -> float:
    """Pods/s bound through filter+prioritize+bind by `clients` concurrent schedulers."""
    pods = iter(pods_to_schedule(total, rng, "concurrent"))
    lock = threading.Lock()
    bound = [0]

    def worker() -> None:
        client = Client(port)
        everything = NodeLists(names, None)
        while True:
            with lock:
                requests = next(pods, None)
            if requests is None:
                return
            if schedule_one(client, requests, everything.next())[3]:
                with lock:
                    bound[0] += 1

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    return bound[0] / (time.perf_counter() - started)


def cpu_model() -> str:
    """The CPU's model name (Linux), for the table's caption."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--pods", type=int, default=20_000, help="running pods in the cluster")
    parser.add_argument("--measure", type=int, default=300, help="pods scheduled per measurement")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"load average at start {os.getloadavg()[0]:.1f}"
    )
    header = (
        f"{'nodes':>6} {'GPUs':>6} {'running':>7} {'nodes/request':>13} | {'filter p50/p99 ms':>18} | "
        f"{'prioritize p50/p99 ms':>22} | {'bind p50/p99 ms':>16} | {'pods/s serial':>13} | {'async bind':>10} | "
        f"{'server CPU ms/pod':>17} | "
        f"{'pods/s/core':>11}"
    )
    print(header)
    print("-" * len(header))
    local_rows = []
    for nodes in args.nodes:
        result = run_size(nodes, args.pods, args.measure, args.seed)
        for mode, per_request in (("all", nodes), ("sampled", sample_size(nodes))):
            measured = result["modes"][mode]
            lat = measured["latencies"]
            cells = [
                f"{percentile_ms(lat[v], 50):7.2f} / {percentile_ms(lat[v], 99):7.2f}"
                for v in ("filter", "prioritize", "bind")
            ]
            cpu_ms = measured["server_cpu_ms_per_pod"]
            print(
                f"{nodes:>6} {nodes * 8:>6} {result['running']:>7} {per_request:>13} | {cells[0]:>18} | "
                f"{cells[1]:>22} | {cells[2]:>16} | {measured['rate']:>13.0f} | {measured['async_rate']:>10.0f} | "
                f"{cpu_ms:>17.2f} | "
                f"{1000 / cpu_ms:>11.0f}",
                flush=True,
            )
        local = result["local"]
        local_rows.append(
            (
                nodes,
                result["rate4"],
                [
                    f"{percentile_ms(local[v], 50):7.2f} / {percentile_ms(local[v], 99):7.2f}"
                    for v in ("filter", "prioritize", "bind")
                ],
            )
        )
    print("\nverb compute alone (thread CPU ms in-process, all nodes, no HTTP/JSON), and 4 concurrent clients:")
    print(
        f"{'nodes':>6} | {'filter p50/p99':>16} | {'prioritize p50/p99':>18} | {'bind p50/p99':>16} | "
        f"{'pods/s, 4 clients over HTTP':>27}"
    )
    for nodes, rate4, cells in local_rows:
        print(f"{nodes:>6} | {cells[0]:>16} | {cells[1]:>18} | {cells[2]:>16} | {rate4:>27.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
