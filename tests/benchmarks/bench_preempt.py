"""Benchmark the extender's /preempt over HTTP, and a good /filter's latency while it runs; print a table.

kube-scheduler calls /preempt with its candidate nodes, each with the pods it would evict. Its
default preemption sends max(100, 10 % of the nodes) candidates (500 at 5,000 nodes); a
configuration at 100 % sends every node. This script writes a cluster file (default 5,000 nodes x 8
GPUs, 20,000 running pods, `bench_extender.build_cluster`), starts the real `tensorai-extender
--cluster-file` process, and for each candidate count:
- sends one /preempt for a whole-GPU pod with that many candidates, every running pod of each
  candidate node listed as a victim (`NodeNameToMetaVictims`, nodeCacheCapable: true), timed by the
  client (kube-scheduler gives up after httpTimeout, 5 s in our manifests);
- meanwhile, from a second connection, sends a good /filter (all nodes, a 0.25-GPU pod) in a loop
  and reports the p50/p99 of the filters that ran while the preempts ran back to back, against the
  same loop with no preempt running.

    .venv/bin/python tests/benchmarks/bench_preempt.py [--nodes 5000] [--candidates 500 5000] [--rounds 10]

Targets (issue 13): preempt at 5,000 nodes x 500 candidates well under the 5 s httpTimeout (< 0.5 s);
filter p99 <= 10 ms while preempts run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_extender import Client, NodeLists, PodRequests, build_cluster, cpu_model, percentile_ms, start_extender

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from test_extender_support import pod


def victims_by_node(cluster: dict) -> dict[str, list[str]]:
    """{node: UIDs of the running pods on it} of a `build_cluster` cluster."""
    out: dict[str, list[str]] = {}
    for item in cluster["items"]:
        if item["kind"] == "Pod":
            out.setdefault(item["spec"]["nodeName"], []).append(item["metadata"]["uid"])
    return out


def preempt_body(names: list[str], victims: dict[str, list[str]], count: int, tag: str) -> bytes:
    """ExtenderPreemptionArgs for a one-whole-GPU pod, `count` candidates with all their pods as victims."""
    preemptor = pod(tag, 1000, namespace="bench")
    candidates = [name for name in names if victims.get(name)][:count]
    meta = {
        name: {"Pods": [{"UID": uid} for uid in victims[name]], "NumPDBViolations": 0} for name in candidates
    }
    return json.dumps(
        {"Pod": preemptor, "NodeNameToVictims": None, "NodeNameToMetaVictims": meta}, separators=(",", ":")
    ).encode()


def filter_loop(port: int, names: list[str], stop: threading.Event, calls: list[tuple[float, float]]) -> None:
    """Good /filter calls (all nodes, a 0.25-GPU pod, a new pod each time) until `stop`; (start, seconds) each."""
    client = Client(port)
    everything = NodeLists(names, None)
    index = 0
    while not stop.is_set():
        requests = PodRequests(f"filter-{threading.get_ident()}-{index}", 250)
        index += 1
        body = requests.filter_body(everything.next())
        started = time.perf_counter()
        elapsed, _ = client.post_raw("/filter", body)
        calls.append((started, elapsed))


def measure(port: int, names: list[str], body: bytes | None, rounds: int) -> tuple[list[float], list[float], int]:
    """(preempt seconds per round, latencies of the filters that started and ended while the preempts
    ran back to back, nodes kept in the last answer); with `body` None only the filter loop runs, for
    about as long, as the baseline."""
    stop = threading.Event()
    calls: list[tuple[float, float]] = []
    filters = threading.Thread(target=filter_loop, args=(port, names, stop, calls), daemon=True)
    filters.start()
    time.sleep(0.3)  # the filter loop is warm before the first preempt
    seconds: list[float] = []
    kept = 0
    client = Client(port)
    started = time.perf_counter()
    for _ in range(rounds):
        if body is None:
            time.sleep(0.2)
            continue
        elapsed, answer = client.post_raw("/preempt", body)
        seconds.append(elapsed)
        kept = len(json.loads(answer)["NodeNameToMetaVictims"])
    ended = time.perf_counter()
    stop.set()
    filters.join(30)
    during = [elapsed for start, elapsed in calls if start >= started and start + elapsed <= ended]
    return seconds, during, kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--pods", type=int, default=20_000, help="running pods in the cluster")
    parser.add_argument("--candidates", type=int, nargs="+", default=[500, 5000])
    parser.add_argument("--rounds", type=int, default=10, help="preempts per candidate count, back to back")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"load average at start {os.getloadavg()[0]:.1f}"
    )
    cluster = build_cluster(args.nodes, args.pods, args.seed)
    names = [item["metadata"]["name"] for item in cluster["items"] if item["kind"] == "Node"]
    victims = victims_by_node(cluster)
    random.Random(args.seed).shuffle(names)  # candidates spread over the rows, as kube-scheduler's are
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "cluster.json")
        with open(path, "w") as handle:
            json.dump(cluster, handle)
        process, port = start_extender(path)
        try:
            warm = Client(port)
            warm.post_raw("/preempt", preempt_body(names, victims, 10, "warm"))
            header = (
                f"{'nodes':>6} {'candidates':>10} {'victims':>8} {'body KiB':>8} | {'preempt p50 / max s':>20} | "
                f"{'kept':>5} | {'filter meanwhile p50 / p99 ms':>30}"
            )
            print(header)
            print("-" * len(header))
            _, baseline, _ = measure(port, sorted(names), None, args.rounds)
            print(
                f"{args.nodes:>6} {'none':>10} {'':>8} {'':>8} | {'':>20} | {'':>5} | "
                f"{percentile_ms(baseline, 50):>13.2f} / {percentile_ms(baseline, 99):>6.2f} ({len(baseline)} calls)"
            )
            for count in args.candidates:
                body = preempt_body(names, victims, count, f"preemptor-{count}")
                listed = body.count(b'{"UID":')
                seconds, latencies, kept = measure(port, sorted(names), body, args.rounds)
                print(
                    f"{args.nodes:>6} {min(count, len(victims)):>10} {listed:>8} {len(body) >> 10:>8} | "
                    f"{percentile_ms(seconds, 50) / 1000:>10.3f} / {max(seconds):>7.3f} | {kept:>5} | "
                    f"{percentile_ms(latencies, 50):>13.2f} / {percentile_ms(latencies, 99):>6.2f} "
                    f"({len(latencies)} calls)",
                    flush=True,
                )
        finally:
            process.terminate()
            process.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
