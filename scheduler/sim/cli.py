"""`tensorai-sim`: replay the openb trace (or a built-in synthetic one) through the scheduling core.

    tensorai-sim                                   # short comparison on the built-in synthetic cluster
    tensorai-sim --workload default --seeds 42-51 --json out.json --plot out.png

The trace is read from --trace-dir (default ../shared/data/openb next to the repository); get it from
https://github.com/alibaba/clusterdata/tree/master/cluster-trace-gpu-v2023 and cite Weng et al.,
USENIX ATC'23. docs/simulator.md documents the protocol and the JSON schema.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tensorai.proto import cliutil
from tensorai.scheduler.core.policies import POLICY_NAMES
from tensorai.scheduler.core.shapes import TargetWorkload
from tensorai.scheduler.core.types import NodeSpec
from tensorai.scheduler.sim.metrics import REPORT_POINTS, SeedMetrics, mean_sd, seed_metrics, seed_to_json
from tensorai.scheduler.sim.published import published_unallocated
from tensorai.scheduler.sim.replay import ONLINE_SUFFIX, Stream, build_stream, replay
from tensorai.scheduler.sim.synthetic import synthetic_nodes, synthetic_pods
from tensorai.scheduler.sim.trace import (
    CITATION,
    DEFAULT_NODE_FILE,
    TRACE_URL,
    PodTrace,
    TraceError,
    pod_file,
    read_nodes,
    read_pods,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TRACE_DIR = REPO_ROOT.parent / "shared" / "data" / "openb"
DEFAULT_POLICIES = "random,bestfit,binpack,spread,fgd,tensorai,tensorai-online"
SIM_POLICIES = (*POLICY_NAMES, *(f"{name}{ONLINE_SUFFIX}" for name in ("fgd", "tensorai")))
JSON_SCHEMA_VERSION = 1


class UsageError(ValueError):
    """A command-line value that cannot be used."""


def parse_seeds(text: str) -> list[int]:
    """'42-51' or '42,45,50-51' -> a list of seeds."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        low, dash, high = part.partition("-")
        try:
            if dash:
                seeds.extend(range(int(low), int(high) + 1))
            else:
                seeds.append(int(part))
        except ValueError as error:
            raise UsageError(f"--seeds {text!r}: expected e.g. '42-51' or '42,43'") from error
    if not seeds:
        raise UsageError("--seeds names no seed")
    return seeds


def parse_policies(text: str) -> list[str]:
    policies = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in policies if p not in SIM_POLICIES]
    if unknown or not policies:
        raise UsageError(f"--policies: unknown {', '.join(unknown) or '(none)'}; choose from {', '.join(SIM_POLICIES)}")
    return policies


def _names_file(path: Path, what: str) -> list[str]:
    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        raise UsageError(f"{what} {path}: {error}") from error
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


# The report reads unallocated GPUs at 100 % and 130 % of capacity: a stream that arrives less has no
# 130 % point (the metrics were NaN); past 10x a replay only keeps failing pods on a full cluster.
ARRIVE_MIN = max(REPORT_POINTS) / 100
ARRIVE_MAX = 10.0


def parse_arrive(text: str) -> float:
    """--arrive: arrived GPU demand as a multiple of capacity, ARRIVE_MIN..ARRIVE_MAX (argparse type)."""
    try:
        arrive = float(text)
    except ValueError:
        arrive = math.nan
    if not ARRIVE_MIN <= arrive <= ARRIVE_MAX:  # NaN fails too
        raise argparse.ArgumentTypeError(
            f"expected a multiple of capacity from {ARRIVE_MIN:g} (the report's {max(REPORT_POINTS)} % point) "
            f"to {ARRIVE_MAX:g}, got {text!r}")
    return arrive


def build_parser() -> argparse.ArgumentParser:
    parser = cliutil.ArgumentParser(prog="tensorai-sim", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    cliutil.add_version_flag(parser)
    parser.add_argument("--trace-dir", type=Path, default=DEFAULT_TRACE_DIR, help="folder with the openb CSVs")
    parser.add_argument("--workload", default="default", help="openb pod list variant (default, gpushare40, ...)")
    parser.add_argument("--nodes", type=Path, help="node list CSV (overrides --trace-dir)")
    parser.add_argument("--pods", type=Path, help="pod list CSV (overrides --workload)")
    parser.add_argument("--synthetic", action="store_true", help="built-in openb-like cluster and workload")
    parser.add_argument("--policies", default=DEFAULT_POLICIES, help=f"comma list of {', '.join(SIM_POLICIES)}")
    parser.add_argument("--seeds", default="42-51", help="e.g. 42-51 or 42,43")
    parser.add_argument("--arrive", type=parse_arrive, default=1.3,
                        help=f"arrived GPU demand to reach, x capacity ({ARRIVE_MIN:g}..{ARRIVE_MAX:g})")
    parser.add_argument("--stream", type=Path, help="pod names in arrival order (no shuffling or resampling)")
    parser.add_argument("--node-order", type=Path, help="node names, first preferred on ties")
    parser.add_argument("--json", type=Path, help="write per-seed and summary metrics as JSON here")
    parser.add_argument("--plot", type=Path, help="write the unallocated-GPU curves as PNG here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


@dataclass(slots=True)
class Inputs:
    label: str
    nodes: list[NodeSpec]
    pods: PodTrace
    trace_dir: Path | None


def load_inputs(args: argparse.Namespace) -> Inputs:
    if args.synthetic:
        nodes = synthetic_nodes()
        return Inputs("synthetic", nodes, synthetic_pods(nodes), None)
    nodes = read_nodes(args.nodes or args.trace_dir / DEFAULT_NODE_FILE)
    pods = read_pods(args.pods or pod_file(args.trace_dir, args.workload))
    label = args.pods.stem.removeprefix("openb_pod_list_") if args.pods else args.workload
    return Inputs(label, nodes, pods, args.trace_dir)


def make_streams(args: argparse.Namespace, inputs: Inputs, seeds: list[int]) -> list[Stream]:
    capacity = sum(node.gpu_count for node in inputs.nodes) * 1000
    fixed_pods = fixed_order = None
    if args.stream is not None:
        index = {name: i for i, name in enumerate(inputs.pods.names)}
        names = _names_file(args.stream, "--stream")
        missing = [name for name in names if name not in index]
        if missing:
            raise UsageError(f"--stream: {len(missing)} pod name(s) not in the pod list, e.g. {missing[0]!r}")
        fixed_pods = np.array([index[name] for name in names], dtype=np.int64)
    if args.node_order is not None:
        index = {node.name: i for i, node in enumerate(inputs.nodes)}
        names = _names_file(args.node_order, "--node-order")
        missing = [name for name in names if name not in index]
        if missing:
            raise UsageError(f"--node-order: {len(missing)} node name(s) not in the node list, e.g. {missing[0]!r}")
        listed = [index[name] for name in dict.fromkeys(names)]
        rest = [i for i in range(len(inputs.nodes)) if i not in set(listed)]
        fixed_order = np.array(listed + rest, dtype=np.int64)
    streams = []
    for seed in seeds:
        stream = build_stream(inputs.pods.total_gpu_milli, len(inputs.nodes), capacity, seed, args.arrive)
        if fixed_pods is not None:
            stream.pod_indexes = fixed_pods
        if fixed_order is not None:
            stream.node_order = fixed_order
        streams.append(stream)
    return streams


def summary_json(results: dict[str, list[SeedMetrics]], published: dict[str, np.ndarray]) -> dict:
    out: dict = {}
    for policy, seeds in results.items():
        entry: dict = {"summary": {}, "seeds": [seed_to_json(m) for m in seeds]}
        for metric in ("unallocated_gpu_pct", "frag_amount_pct", "frag_rate_pct"):
            entry["summary"][metric] = {}
            for pct in REPORT_POINTS:
                mean, sd = mean_sd([float(getattr(m, metric)[pct]) for m in seeds])
                entry["summary"][metric][str(pct)] = {"mean": round(mean, 4), "sd": round(sd, 4)}
        entry["summary"]["seconds_per_seed"] = round(sum(m.seconds for m in seeds) / len(seeds), 3)
        if policy in published:
            entry["published_unallocated_gpu_pct"] = {
                str(p): round(float(np.nanmean(published[policy][:, p])), 4) for p in REPORT_POINTS}
        out[policy] = entry
    return out


def paired(results: dict[str, list[SeedMetrics]], baseline: str = "fgd") -> dict[str, dict[str, dict[str, float]]]:
    """Per policy: mean ± sd over seeds of (baseline - policy) unallocated %, same streams (positive = better)."""
    if baseline not in results:
        return {}
    base = {m.seed: m for m in results[baseline]}
    out: dict[str, dict[str, dict[str, float]]] = {}
    for policy, seeds in results.items():
        if policy == baseline:
            continue
        out[policy] = {}
        for pct in REPORT_POINTS:
            diffs = [base[m.seed].at(pct) - m.at(pct) for m in seeds if m.seed in base]
            mean, sd = mean_sd(diffs)
            out[policy][str(pct)] = {"mean": round(mean, 4), "sd": round(sd, 4),
                                     "better_seeds": sum(d > 0 for d in diffs), "seeds": len(diffs)}
    return out


def print_table(console, inputs: Inputs, results: dict[str, list[SeedMetrics]],
                published: dict[str, np.ndarray], pairs: dict) -> None:
    from rich.table import Table

    seeds = len(next(iter(results.values())))
    gpus = sum(node.gpu_count for node in inputs.nodes)
    table = Table(title=f"{inputs.label}: {len(inputs.nodes)} nodes, {gpus} GPUs, {seeds} seed(s) - "
                        "unallocated GPU % (mean ± sd)")
    for column in ("policy", "@100%", "@130%", "published @100%", "vs fgd @100% (paired)", "frag @100%",
                   "1st GPU fail @ arrived %", "s/seed"):
        table.add_column(column, justify="left" if column == "policy" else "right")

    def fmt(values: list[float]) -> str:
        mean, sd = mean_sd(values)
        return "-" if np.isnan(mean) else f"{mean:.2f} ± {sd:.2f}"

    for policy, ms in results.items():
        pub = published.get(policy)
        pub_text = "-" if pub is None else fmt([float(v) for v in pub[:, 100]])
        pair = pairs.get(policy, {}).get("100")
        pair_text = "-" if pair is None else (f"{pair['mean']:+.2f} ± {pair['sd']:.2f} "
                                             f"({pair['better_seeds']}/{pair['seeds']})")
        first = [m.arrived_pct_at_failure["1st"] for m in ms if m.arrived_pct_at_failure["1st"] is not None]
        table.add_row(policy, fmt([m.at(100) for m in ms]), fmt([m.at(130) for m in ms]), pub_text, pair_text,
                      fmt([float(m.frag_amount_pct[100]) for m in ms]), fmt(first),
                      f"{sum(m.seconds for m in ms) / len(ms):.2f}")
    console.print(table)
    console.print("vs fgd: fgd minus policy on the same streams, positive = fewer unallocated GPUs; "
                  "(k/n) = seeds where the policy beat fgd.")


def run(args: argparse.Namespace, console) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    inputs = load_inputs(args)
    seeds = parse_seeds(args.seeds)
    policies = parse_policies(args.policies)
    streams = make_streams(args, inputs, seeds)
    workload = TargetWorkload.from_demands(inputs.pods.demands)
    results: dict[str, list[SeedMetrics]] = {policy: [] for policy in policies}
    total_pods = sum(len(s.pod_indexes) for s in streams) * len(policies)
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TimeElapsedColumn(), console=console, disable=args.no_progress, transient=True) as progress:
        task = progress.add_task("replaying", total=total_pods)
        for policy in policies:
            for stream in streams:
                progress.update(task, description=f"{policy} seed {stream.seed}")
                done = progress.tasks[0].completed

                def tick(event: int, base: float = done) -> None:
                    progress.update(task, completed=base + event)

                result = replay(inputs.nodes, inputs.pods.demands, stream, policy, workload, progress=tick)
                results[policy].append(seed_metrics(result))
                progress.update(task, completed=done + len(stream.pod_indexes))
    published = published_unallocated(inputs.trace_dir, inputs.label) if inputs.trace_dir else {}
    pairs = paired(results)
    print_table(console, inputs, results, published, pairs)
    if args.json is not None:
        document = {
            "schema_version": JSON_SCHEMA_VERSION,
            "tool": "tensorai-sim",
            "workload": inputs.label,
            "nodes": len(inputs.nodes),
            "gpus": sum(node.gpu_count for node in inputs.nodes),
            "arrive": args.arrive,
            "seeds": seeds,
            "tie_rule": "highest score; ties -> earliest node in the per-seed random node order",
            "policies": summary_json(results, published),
            "paired_vs_fgd": pairs,
            "citation": CITATION,
        }
        args.json.write_text(json.dumps(document, indent=1))
        console.print(f"wrote {args.json}")
    if args.plot is not None:
        from tensorai.scheduler.sim.plot import plot_curves

        plot_curves(args.plot, results, published,
                    f"{inputs.label}: {len(seeds)} seed(s), arrive {args.arrive:g}x capacity")
        console.print(f"wrote {args.plot}")
    if inputs.trace_dir is not None:
        console.print(f"trace: Alibaba cluster-trace-gpu-v2023 ({TRACE_URL}); cite: {CITATION}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if not argv:  # no arguments: the quick built-in comparison
        args.synthetic, args.seeds = True, "42-44"
    console = Console()
    if not console.is_terminal:  # piped into a file or CI log: do not squeeze the table to 80 columns
        console = Console(width=160)
    try:
        return run(args, console)
    except (UsageError, TraceError) as error:
        console.print(f"[red]error:[/red] {error}")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
