"""Scheduling throughput through the REAL kube-scheduler v1.36: with the tensor.ai extender vs without.

Starts a LocalCluster without a node (etcd, kube-apiserver, kube-controller-manager, the project's
install, the extender behind a kube-scheduler with the shipped KubeSchedulerConfiguration) and a
second kube-scheduler - the same binary and the same configuration minus the extender, profile
`bench-plain` - then creates fake GPU nodes through the API: two equal pools of --nodes nodes, each
node with 8 simulated H100s (allocatable tensor.ai/vgpu-milli 8000, a Ready condition, no
not-ready taint, and the `tensor.ai/inventory` annotation as the device plugin writes it).

Each round creates --pods pods (vgpu-milli limits 250/500/1000 mixed, no webhook involved) as fast
as a few client threads can, for ONE scheduler (pool selected by nodeSelector), and measures pods/s
from the first create to the last pod seen bound on a watch. Rounds alternate extender / plain, so
machine drift hits both. The table gives pods/s of each, the ratio, and where the time went:
extender per-verb calls and mean latency (its /metrics), kube-scheduler's own rate-limiter wait and
scheduling-attempt time (its /metrics), and CPU seconds of every process (/proc/<pid>/stat).

    PATH=.venv/bin:$PATH python tests/benchmarks/bench_kube_scheduler.py --nodes 100 --pods 500 --rounds 3
    ... --qps 50 --burst 100     # kube-scheduler's default client rate limit instead of the shipped one

Needs root and the Kubernetes binaries (tests/e2e/binaries.py says what is missing).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import os
import queue
import re
import signal
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tensorai.deviceplugin.backends import parse_sim_gpus  # noqa: E402
from tensorai.deviceplugin.health import HealthTracker  # noqa: E402
from tensorai.deviceplugin.inventory import build_inventory  # noqa: E402
from tensorai.deviceplugin.simulated import SimulatedBackend  # noqa: E402
from tensorai.proto import contract  # noqa: E402
from tests.e2e import binaries  # noqa: E402
from tests.e2e.cluster import SCHEDULER_NAME, LocalCluster  # noqa: E402

PLAIN_SCHEDULER = "bench-plain"
NAMESPACE = "bench"
POOL_LABEL = "bench.tensor.ai/pool"
SIZES_MILLI = (250, 500, 1000, 250, 500, 250, 250, 1000)  # quarter, half and whole GPUs
HEARTBEAT_REFRESH_S = 45.0  # the extender runs with --node-stale-seconds=120
ALLOW_METRICS = ("--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics",)


class Api:
    """A lean HTTPS client of the API server: one keep-alive connection per thread, pre-encoded JSON.

    The benchmark shares two cores with everything it measures; the `kubernetes` package would spend
    several times this CPU per request."""

    def __init__(self, server: str, token: str) -> None:
        self.host, self.port = server.removeprefix("https://").split(":")
        self.headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        self.context = ssl._create_unverified_context()  # the API server's self-signed cert on 127.0.0.1
        self.local = threading.local()

    def connection(self) -> http.client.HTTPSConnection:
        if getattr(self.local, "connection", None) is None:
            self.local.connection = http.client.HTTPSConnection(self.host, int(self.port), context=self.context,
                                                                timeout=60)
        return self.local.connection

    def call(self, method: str, path: str, body: bytes | None = None,
             content_type: str = "application/json") -> tuple[int, bytes]:
        headers = dict(self.headers)
        if body is not None:
            headers["Content-Type"] = content_type
        for attempt in range(3):
            connection = self.connection()
            try:
                connection.request(method, path, body=body, headers=headers)
                response = connection.getresponse()
                return response.status, response.read()
            except (OSError, http.client.HTTPException):
                connection.close()
                self.local.connection = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def must(self, method: str, path: str, body: object | None = None, content_type: str = "application/json",
             ok: Iterable[int] = (200, 201)) -> dict:
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        status, answer = self.call(method, path, data, content_type)
        if status not in tuple(ok):
            raise RuntimeError(f"{method} {path}: HTTP {status}: {answer[:300]!r}")
        return json.loads(answer) if answer else {}


def parallel(items: list, work: Callable[[Any], None], threads: int) -> None:
    """work(item) for every item on `threads` threads; the first error is raised."""
    pending: queue.Queue = queue.Queue()
    for item in items:
        pending.put(item)
    errors: list[BaseException] = []

    def worker() -> None:
        while not errors:
            try:
                item = pending.get_nowait()
            except queue.Empty:
                return
            try:
                work(item)
            except BaseException as error:  # reported by the caller
                errors.append(error)

    workers = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    if errors:
        raise errors[0]


# ---------------------------------------------------------------------- fake nodes
def inventory_text(node_name: str) -> str:
    """The `tensor.ai/inventory` value the device plugin would publish for 8 simulated H100s now."""
    backend = SimulatedBackend(parse_sim_gpus("8xH100:81559"), node_name=node_name)
    tracker = HealthTracker([gpu.uuid for gpu in backend.gpus()])
    inventory = build_inventory(backend, tracker, node_name=node_name, sharing_mode="timeslice",
                                plugin_version="bench")
    return contract.encode_inventory(inventory)


def node_status() -> dict:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    resources = {"cpu": "128", "memory": "1024Gi", "pods": "1000", contract.RESOURCE_VGPU_MILLI: "8000"}
    return {"capacity": resources, "allocatable": resources, "conditions": [
        {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "fake node of the benchmark",
         "lastHeartbeatTime": now, "lastTransitionTime": now}]}


def create_nodes(api: Api, names: list[str], pool: str, threads: int = 8) -> None:
    def create(name: str) -> None:
        body = {"apiVersion": "v1", "kind": "Node", "metadata": {
            "name": name, "labels": {contract.LABEL_GPU_NODE: "true", POOL_LABEL: pool},
            "annotations": {contract.ANNOTATION_INVENTORY: inventory_text(name)}}}
        api.must("POST", "/api/v1/nodes", body)
        api.must("PATCH", f"/api/v1/nodes/{name}/status", {"status": node_status()},
                 "application/merge-patch+json")
        # TaintNodesByCondition tainted it not-ready on create; no node-lifecycle controller lifts it here
        api.must("PATCH", f"/api/v1/nodes/{name}", {"spec": {"taints": None}}, "application/merge-patch+json")

    parallel(names, create, threads)


def refresh_heartbeats(api: Api, names: list[str], threads: int = 8) -> None:
    """Re-publish every node's inventory (fresh heartbeat), as the device plugin does every interval."""
    def patch(name: str) -> None:
        api.must("PATCH", f"/api/v1/nodes/{name}",
                 {"metadata": {"annotations": {contract.ANNOTATION_INVENTORY: inventory_text(name)}}},
                 "application/merge-patch+json")

    parallel(names, patch, threads)


# ---------------------------------------------------------------------- metrics
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? ([0-9.eE+-]+|NaN|\+Inf)$')


def parse_metrics(text: str) -> dict[tuple[str, str], float]:
    samples = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            samples[(match.group(1), match.group(2) or "")] = float(match.group(3))
    return samples


BIND_SETTLE_S = 1.0


def scrape(url: str, token: str | None = None) -> dict[tuple[str, str], float]:
    import urllib.request

    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10, context=ssl._create_unverified_context()) as response:
            return parse_metrics(response.read().decode())
    except OSError:
        return {}


def delta(after: dict, before: dict, name: str, label_filter: str = "") -> float:
    return sum(value - before.get(key, 0.0) for key, value in after.items()
               if key[0] == name and label_filter in key[1])


def process_cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------- one round
def pod_body(name: str, round_id: str, milli: int, scheduler: str, pool: str) -> bytes:
    return json.dumps({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"bench-round": round_id}},
        "spec": {
            "schedulerName": scheduler, "nodeSelector": {POOL_LABEL: pool},
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "worker", "image": "registry.invalid/worker:bench", "imagePullPolicy": "Never",
                            "resources": {"limits": {contract.RESOURCE_VGPU_MILLI: str(milli)}}}],
        },
    }).encode()


class BoundWatch:
    """Watches the round's pods; `bound_at[name]` = when spec.nodeName was first seen set."""

    def __init__(self, api: Api, round_id: str, expected: int) -> None:
        self.api, self.round_id, self.expected = api, round_id, expected
        self.bound_at: dict[str, float] = {}
        self.nodes: dict[str, str] = {}
        self.done = threading.Event()
        _, data = api.call("GET", f"/api/v1/namespaces/{NAMESPACE}/pods?limit=1")
        self.resource_version = json.loads(data)["metadata"]["resourceVersion"]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.ready = threading.Event()
        self.thread.start()
        self.ready.wait(10)

    def _run(self) -> None:
        reconnects = 0
        while not self.done.is_set():  # a watch the API server ends is resumed from the last resourceVersion
            connection = http.client.HTTPSConnection(self.api.host, int(self.api.port), context=self.api.context,
                                                     timeout=600)
            path = (f"/api/v1/namespaces/{NAMESPACE}/pods?watch=1&labelSelector=bench-round%3D{self.round_id}"
                    f"&resourceVersion={self.resource_version}")
            try:
                connection.request("GET", path, headers=self.api.headers)
                response = connection.getresponse()
                self.ready.set()
                while not self.done.is_set():
                    line = response.readline()
                    if not line:
                        break
                    self._seen(json.loads(line))
            except (OSError, http.client.HTTPException, ValueError) as error:
                print(f"# watch of round {self.round_id} ended ({error}); resuming", file=sys.stderr)
            finally:
                connection.close()
            reconnects += 1
            if reconnects > 20:
                self.ready.set()
                return

    def _seen(self, event: dict) -> None:
        pod = event.get("object") or {}
        metadata = pod.get("metadata") or {}
        if event.get("type") == "ERROR":
            raise ValueError(f"watch error {pod}")
        self.resource_version = metadata.get("resourceVersion") or self.resource_version
        node = (pod.get("spec") or {}).get("nodeName")
        name = metadata.get("name")
        if node and name not in self.bound_at:
            self.bound_at[name] = time.monotonic()
            self.nodes[name] = node
            if len(self.bound_at) >= self.expected:
                self.done.set()


def run_round(api: Api, round_id: str, scheduler: str, pool: str, pods: int, creators: int,
              timeout_s: float) -> dict:
    names = [f"p-{round_id}-{i:05d}" for i in range(pods)]
    bodies = [pod_body(name, round_id, SIZES_MILLI[i % len(SIZES_MILLI)], scheduler, pool)
              for i, name in enumerate(names)]
    watch = BoundWatch(api, round_id, pods)
    started = time.monotonic()
    parallel(bodies, lambda body: api.must("POST", f"/api/v1/namespaces/{NAMESPACE}/pods", body), creators)
    created = time.monotonic()
    watch.done.wait(timeout_s)
    watch.done.set()
    last = max(watch.bound_at.values(), default=time.monotonic())
    first = min(watch.bound_at.values(), default=last)
    return {"bound": len(watch.bound_at), "pods": pods, "seconds": last - started,
            "binding_pods_per_s": (len(watch.bound_at) - 1) / max(last - first, 1e-9),
            "create_s": created - started, "pods_per_s": len(watch.bound_at) / max(last - started, 1e-9),
            "nodes_used": len(set(watch.nodes.values()))}


def delete_round(api: Api, round_id: str, timeout_s: float = 120.0) -> None:
    api.must("DELETE", f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector=bench-round%3D{round_id}"
             "&gracePeriodSeconds=0")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        listed = api.must("GET", f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector=bench-round%3D{round_id}&limit=1")
        if not listed["items"]:
            return
        time.sleep(0.5)
    raise RuntimeError(f"pods of round {round_id} still exist after {timeout_s:.0f} s")


# ---------------------------------------------------------------------- the run
def plain_config(extender_config: dict) -> dict:
    """The same KubeSchedulerConfiguration without the extender, as its own scheduler name."""
    config = json.loads(json.dumps(extender_config))
    config.pop("extenders", None)
    config["leaderElection"] = {"leaderElect": False}
    for profile in config["profiles"]:
        profile["schedulerName"] = PLAIN_SCHEDULER
    return config


def set_client_rate(qps: float | None, burst: int | None) -> Callable[[dict], None]:
    def edit(config: dict) -> None:
        connection = config.setdefault("clientConnection", {})
        if qps is not None:
            connection["qps"] = qps
        if burst is not None:
            connection["burst"] = burst
    return edit


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


def benchmark(nodes: int, pods: int, rounds: int, qps: float | None, burst: int | None, creators: int,
              timeout_s: float, out: Callable[[str], None] = print, workdir: Path | None = None) -> dict:
    """Run the comparison; returns {"rounds": [...], "summary": {...}}; prints the table through `out`."""
    cluster = LocalCluster(workdir, with_node=False, scheduler_config_edit=set_client_rate(qps, burst),
                           scheduler_args=ALLOW_METRICS, extender_log_level="INFO")  # the shipped level
    try:
        cluster.start()
        config = cluster.scheduler_config()
        shipped = config.get("clientConnection", {})
        cluster.start_scheduler(PLAIN_SCHEDULER, plain_config(config), ALLOW_METRICS)
        admin = cluster.identities["admin"].token
        api = Api(cluster.server, admin)
        api.must("POST", "/api/v1/namespaces", {"metadata": {"name": NAMESPACE}}, ok=(201, 409))
        pools = {"ext": [f"gpu-ext-{i:05d}" for i in range(nodes)],
                 "plain": [f"gpu-plain-{i:05d}" for i in range(nodes)]}
        began = time.monotonic()
        for pool, names in pools.items():
            create_nodes(api, names, pool)
        out(f"# {2 * nodes} fake nodes created in {time.monotonic() - began:.1f} s")
        extender_port = cluster.ports["extender-metrics"]  # /metrics has its own listener
        wait_view(extender_port, 2 * nodes)
        refreshed = time.monotonic()
        pids = {name: cluster.named[name].pid for name in
                ("extender", "kube-scheduler", PLAIN_SCHEDULER, "kube-apiserver", "etcd", "kube-controller-manager")}
        pids["bench"] = os.getpid()
        out(f"# workdir {cluster.workdir}; pids {pids}")
        endpoints = {"extender": (f"http://127.0.0.1:{extender_port}/metrics", None),
                     "kube-scheduler": (f"https://127.0.0.1:{cluster.ports['scheduler']}/metrics", admin),
                     PLAIN_SCHEDULER: (f"https://127.0.0.1:{cluster.ports[PLAIN_SCHEDULER]}/metrics", admin)}
        results = []
        order = [(SCHEDULER_NAME, "ext"), (PLAIN_SCHEDULER, "plain")]
        for number in range(rounds):
            for scheduler, pool in order if number % 2 == 0 else order[::-1]:
                if time.monotonic() - refreshed > HEARTBEAT_REFRESH_S:
                    refresh_heartbeats(api, pools["ext"] + pools["plain"])
                    refreshed = time.monotonic()
                round_id = f"r{number}{pool}"
                before = {name: scrape(*endpoint) for name, endpoint in endpoints.items()}
                cpu_before = {name: process_cpu_s(pid) for name, pid in pids.items()}
                result = run_round(api, round_id, scheduler, pool, pods, creators, timeout_s)
                result["cpu_s"] = {name: process_cpu_s(pid) - cpu_before[name] for name, pid in pids.items()}
                # The watch sees a pod bound when the API write commits, before the extender's bind verb has
                # answered and counted it: let the last binds finish before reading the counters (off the clock).
                time.sleep(BIND_SETTLE_S)
                after = {name: scrape(*endpoint) for name, endpoint in endpoints.items()}
                result.update(round=number, scheduler=scheduler,
                              where=where_time_goes(before, after, scheduler))
                results.append(result)
                delete_round(api, round_id)
                time.sleep(1.0)  # let both views settle the deletions
        summary = summarize(results, nodes, pods, rounds, qps if qps is not None else shipped.get("qps"),
                            burst if burst is not None else shipped.get("burst"))
        print_table(results, summary, out)
        return {"rounds": results, "summary": summary}
    finally:
        cluster.stop()


def wait_view(port: int, nodes: int, timeout_s: float = 120.0) -> None:
    """Until the extender's view holds every fake node (its heartbeat gauge has one sample per node)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        samples = scrape(f"http://127.0.0.1:{port}/metrics")
        if sum(1 for key in samples if key[0] == "tensorai_node_inventory_heartbeat_timestamp_seconds") >= nodes:
            return
        time.sleep(0.5)
    raise RuntimeError(f"the extender's view did not reach {nodes} nodes in {timeout_s:.0f} s")


VERBS = ("filter", "prioritize", "bind")


def where_time_goes(before: dict, after: dict, scheduler: str) -> dict:
    where: dict[str, float] = {}
    if scheduler == SCHEDULER_NAME:
        ext_b, ext_a = before["extender"], after["extender"]
        for verb in VERBS:
            label = f'verb="{verb}"'
            count = delta(ext_a, ext_b, "tensorai_extender_request_seconds_count", label)
            total = delta(ext_a, ext_b, "tensorai_extender_request_seconds_sum", label)
            where[f"{verb}_calls"] = count
            where[f"{verb}_ms"] = 1000 * total / count if count else float("nan")
    name = "kube-scheduler" if scheduler == SCHEDULER_NAME else PLAIN_SCHEDULER
    sched_b, sched_a = before[name], after[name]
    attempts = delta(sched_a, sched_b, "scheduler_scheduling_attempt_duration_seconds_count")
    where["attempts"] = attempts
    where["attempt_ms"] = (1000 * delta(sched_a, sched_b, "scheduler_scheduling_attempt_duration_seconds_sum")
                           / attempts if attempts else float("nan"))
    waits = delta(sched_a, sched_b, "rest_client_rate_limiter_duration_seconds_count")
    where["ratelimit_wait_s"] = delta(sched_a, sched_b, "rest_client_rate_limiter_duration_seconds_sum")
    where["ratelimit_calls"] = waits
    return where


def summarize(results: list[dict], nodes: int, pods: int, rounds: int, qps: object, burst: object) -> dict:
    def rates(scheduler: str) -> list[float]:
        return [r["pods_per_s"] for r in results if r["scheduler"] == scheduler]

    ext, plain = rates(SCHEDULER_NAME), rates(PLAIN_SCHEDULER)
    ext_mean, plain_mean = sum(ext) / len(ext), sum(plain) / len(plain)
    return {"nodes": nodes, "pods": pods, "rounds": rounds, "qps": qps, "burst": burst,
            "with_extender_pods_per_s": ext_mean, "alone_pods_per_s": plain_mean,
            "ratio": ext_mean / plain_mean if plain_mean else float("nan"),
            "all_bound": all(r["bound"] == r["pods"] for r in results)}


def print_table(results: list[dict], summary: dict, out: Callable[[str], None]) -> None:
    out(f"# kube-scheduler v1.36.2 with vs without the tensor.ai extender: {summary['nodes']} fake nodes per pool "
        f"(8 H100 each), {summary['pods']} pods per round, clientConnection qps {summary['qps']} burst "
        f"{summary['burst']}; {os.cpu_count()} CPUs ({cpu_model()}), {dt.date.today()}")
    out("| round | scheduler | bound | create s | total s | pods/s | first-to-last bound pods/s | nodes used "
        "| filter ms | prioritize ms "
        "| bind ms | attempt ms | rate-limit wait s | CPU s: extender / kube-sched / apiserver / etcd / bench |")
    out("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        w, cpu = r["where"], r["cpu_s"]
        sched_cpu = cpu["kube-scheduler"] if r["scheduler"] == SCHEDULER_NAME else cpu[PLAIN_SCHEDULER]
        verbs = " | ".join(f"{w[f'{verb}_ms']:.1f} ({w[f'{verb}_calls']:.0f})" if f"{verb}_ms" in w else "-"
                           for verb in VERBS)
        out(f"| {r['round']} | {'extender' if r['scheduler'] == SCHEDULER_NAME else 'alone'} | "
            f"{r['bound']}/{r['pods']} | {r['create_s']:.2f} | {r['seconds']:.2f} | {r['pods_per_s']:.0f} | "
            f"{r['binding_pods_per_s']:.0f} | "
            f"{r['nodes_used']} | {verbs} | {w['attempt_ms']:.1f} | {w['ratelimit_wait_s']:.2f} | "
            f"{cpu['extender']:.1f} / {sched_cpu:.1f} / {cpu['kube-apiserver']:.1f} / {cpu['etcd']:.1f} / "
            f"{cpu['bench']:.1f} |")
    out(f"# mean pods/s: with extender {summary['with_extender_pods_per_s']:.0f}, alone "
        f"{summary['alone_pods_per_s']:.0f}, ratio {summary['ratio']:.2f}"
        f"{'' if summary['all_bound'] else '  (NOT every pod was bound!)'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=100, help="fake GPU nodes per pool (default 100)")
    parser.add_argument("--pods", type=int, default=500, help="pods per round (default 500)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per scheduler, alternating (default 3)")
    parser.add_argument("--qps", type=float, help="clientConnection.qps of both schedulers (default: shipped)")
    parser.add_argument("--burst", type=int, help="clientConnection.burst of both schedulers (default: shipped)")
    parser.add_argument("--creators", type=int, default=6, help="threads creating pods (default 6)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds a round may take (default 300)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--workdir", type=Path, help="the cluster's folder (logs, configs); default: a new one")
    args = parser.parse_args(argv)
    reason = binaries.missing_for_local_cluster()
    if reason:
        print(f"cannot start a local cluster: {reason}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` stops the cluster
    results = benchmark(args.nodes, args.pods, args.rounds, args.qps, args.burst, args.creators, args.timeout,
                        print, args.workdir)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0 if results["summary"]["all_bound"] else 1


if __name__ == "__main__":
    sys.exit(main())
