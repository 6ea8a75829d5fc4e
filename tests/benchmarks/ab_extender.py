"""Paired A/B of two extender versions over HTTP: the same pods, alternately, to both at once.

This VM's speed drifts by a quarter over minutes, so two benchmark runs a minute apart can disagree
by more than a change is worth. Here both extenders (this checkout and a baseline checkout, e.g. a
`git worktree` of an older commit) serve the same cluster file at the same time; every pod goes
filter -> prioritize -> bind to one, then to the other, alternating which goes first, so drift hits
both alike. Prints, per version, pods bound, server CPU per pod and wall time per pod.

    git worktree add /tmp/baseline <commit>
    .venv/bin/python tests/benchmarks/ab_extender.py --baseline /tmp/baseline [--nodes N] [--pods N] [--rounds N]
    git worktree remove /tmp/baseline
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench_extender as bench

PACKAGES = ("proto", "deviceplugin", "scheduler", "kernels", "demo")


def baseline_path(checkout: Path, folder: Path) -> str:
    """A PYTHONPATH entry under which `tensorai.*` imports from `checkout` (the repository's folder layout)."""
    package = folder / "tensorai"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    for name in PACKAGES:
        (package / name).symlink_to(checkout / name)
    return str(folder)


def start(path: str, pythonpath: str | None) -> tuple[subprocess.Popen, int]:
    """`bench_extender.start_extender` with `tensorai` imported from `pythonpath` (None: this checkout)."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return bench.start_extender(path, env)


def one_round(path: str, names: list[str], pythonpaths: dict[str, str | None], pods: int, seed: int) -> None:
    servers = {version: start(path, pythonpath) for version, pythonpath in pythonpaths.items()}
    try:
        clients = {version: bench.Client(port) for version, (_, port) in servers.items()}
        lists = {version: bench.NodeLists(names, None) for version in servers}
        for version in servers:
            for requests in bench.pods_to_schedule(20, random.Random(1), "warm"):
                bench.schedule_one(clients[version], requests, lists[version].next())
        wall = dict.fromkeys(servers, 0.0)
        bound = dict.fromkeys(servers, 0)
        cpu_before = {version: bench.process_cpu_s(process.pid) for version, (process, _) in servers.items()}
        versions = list(servers)
        for index, requests in enumerate(bench.pods_to_schedule(pods, random.Random(seed), "ab")):
            for version in versions if index % 2 else versions[::-1]:
                started = time.perf_counter()
                bound[version] += bench.schedule_one(clients[version], requests, lists[version].next())[3]
                wall[version] += time.perf_counter() - started
        for version, (process, _) in servers.items():
            cpu_ms = (bench.process_cpu_s(process.pid) - cpu_before[version]) * 1000 / pods
            print(f"{version:>9}: {bound[version]} bound, server CPU {cpu_ms:.2f} ms/pod, "
                  f"wall {wall[version] * 1000 / pods:.2f} ms/pod -> {bound[version] / wall[version]:.0f} pods/s",
                  flush=True)
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, required=True, help="a checkout of the version to compare with")
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--pods", type=int, default=600, help="pods per round, sent to both")
    parser.add_argument("--running", type=int, default=20_000, help="running pods in the cluster")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    cluster = bench.build_cluster(args.nodes, args.running, 42)
    names = [item["metadata"]["name"] for item in cluster["items"] if item["kind"] == "Node"]
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "cluster.json")
        Path(path).write_text(json.dumps(cluster))
        versions = {"baseline": baseline_path(args.baseline.resolve(), Path(folder) / "baseline"), "this": None}
        for round_number in range(args.rounds):
            print(f"round {round_number + 1}, {args.nodes} nodes, load {os.getloadavg()[0]:.1f}")
            one_round(path, names, versions, args.pods, 2 + round_number)
    return 0


if __name__ == "__main__":
    sys.exit(main())
