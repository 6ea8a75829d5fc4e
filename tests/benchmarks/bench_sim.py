"""Benchmark: seconds per seed of the openb default trace, per policy, through the real core.

    .venv/bin/python tests/benchmarks/bench_sim.py [--trace-dir DIR] [--policies fgd,tensorai] [--seeds 42-44]

Prints a table (median and best seconds per seed, pods per second). The issue's target is one seed of
default under fgd in <= 3 s on the 2-core CI machine. The first replay also pays numba's cache load.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tensorai.scheduler.core.shapes import TargetWorkload
from tensorai.scheduler.sim.cli import DEFAULT_TRACE_DIR, parse_seeds
from tensorai.scheduler.sim.replay import build_stream, replay
from tensorai.scheduler.sim.trace import DEFAULT_NODE_FILE, pod_file, read_nodes, read_pods


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trace-dir", type=Path, default=DEFAULT_TRACE_DIR)
    parser.add_argument("--workload", default="default")
    parser.add_argument("--policies", default="fgd,tensorai,bestfit")
    parser.add_argument("--seeds", default="42-44")
    args = parser.parse_args()
    nodes = read_nodes(args.trace_dir / DEFAULT_NODE_FILE)
    pods = read_pods(pod_file(args.trace_dir, args.workload))
    workload = TargetWorkload.from_demands(pods.demands)
    capacity = sum(n.gpu_count for n in nodes) * 1000
    seeds = parse_seeds(args.seeds)
    warm = build_stream(pods.total_gpu_milli, len(nodes), capacity, seeds[0])
    warm.pod_indexes = warm.pod_indexes[:200]
    replay(nodes, pods.demands, warm, "fgd", workload)  # load numba's compiled kernels once
    table = Table(title=f"tensorai-sim speed: {args.workload}, {len(nodes)} nodes, {platform.processor() or 'cpu'}")
    for column in ("policy", "pods/seed", "median s/seed", "best s/seed", "pods/s"):
        table.add_column(column, justify="right")
    for policy in args.policies.split(","):
        times, count = [], 0
        for seed in seeds:
            stream = build_stream(pods.total_gpu_milli, len(nodes), capacity, seed)
            started = time.perf_counter()
            replay(nodes, pods.demands, stream, policy, workload)
            times.append(time.perf_counter() - started)
            count = len(stream.pod_indexes)
        median = statistics.median(times)
        table.add_row(policy, str(count), f"{median:.2f}", f"{min(times):.2f}", f"{count / median:,.0f}")
    Console().print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
