#!/usr/bin/env python3
"""Throttle accuracy: two tensorai-workers with shares 0.25 and 0.75 on one GPU; prints their ratio.

    python tests/benchmarks/throttle_accuracy.py            # on a machine with an NVIDIA GPU
    python tests/benchmarks/throttle_accuracy.py --sim      # the CUDA simulator: "GPU time" is CPU time

Both workers run the same matmul loop for --duration-s with the launch throttle on, the way the
device plugin would start them (TENSORAI_VGPU_MILLI=250 / 750). The ideal ratio of completed
operations (and of busy seconds) is 0.25 / 0.75 = 0.333. With --compare-unthrottled the same pair
runs again with --no-throttle, which shows what the throttle changes. Each worker's own
busy fraction (measured GPU time / wall time) is printed next to its share.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

SHARES_MILLI = (250, 750)


def run_pair(job: Path, duration_s: float, throttle: bool, sim: bool, workdir: Path) -> list[dict]:
    processes = []
    for milli in SHARES_MILLI:
        env = {**os.environ, "TENSORAI_VGPU_MILLI": str(milli)}
        if sim:
            env["NUMBA_ENABLE_CUDASIM"] = "1"
        report = workdir / f"report-{milli}-{'on' if throttle else 'off'}.json"
        command = [
            sys.executable, "-m", "tensorai.kernels.worker", "--job", str(job), "--loop",
            "--duration-s", str(duration_s), "--metrics-port", "0", "--report-json", str(report),
            "--throttle" if throttle else "--no-throttle", "--log-level", "WARNING",
        ]  # fmt: skip
        processes.append((milli, report, subprocess.Popen(command, env=env)))
    reports = []
    for milli, report, process in processes:
        code = process.wait(timeout=duration_s + 600)
        if code != 0:
            raise SystemExit(f"worker with share {milli} milli exited {code}")
        data = json.loads(report.read_text())
        data["share_milli"] = milli
        reports.append(data)
    return reports


def summarise(label: str, reports: list[dict]) -> list[str]:
    lines = []
    operations = [sum(op["iterations_run"] for op in report["operations"]) for report in reports]
    for report, count in zip(reports, operations, strict=True):
        lines.append(
            f"| {label} | {report['share_milli'] / 1000:.2f} | {count} | {report['busy_seconds']:.2f} | "
            f"{report['wall_seconds']:.2f} | {report['busy_fraction']:.3f} | "
            f"{report['throttle']['throttled_seconds']:.2f} |"
        )
    low, high = reports
    ratio_ops = operations[0] / operations[1] if operations[1] else float("nan")
    ratio_busy = low["busy_seconds"] / high["busy_seconds"] if high["busy_seconds"] else float("nan")
    lines.append(f"| {label}: ratio 0.25/0.75 | ideal 0.333 | {ratio_ops:.3f} | {ratio_busy:.3f} (busy) | | | |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sim", action="store_true", help="run on the CUDA simulator with tiny matrices")
    parser.add_argument("--duration-s", type=float, help="seconds each pair runs (default 30 on GPU, 8 with --sim)")
    parser.add_argument("--size", type=int, help="matmul size (default 2048 on GPU, 8 with --sim)")
    parser.add_argument("--compare-unthrottled", action="store_true", help="also run the pair with --no-throttle")
    args = parser.parse_args(argv)
    duration = args.duration_s or (8.0 if args.sim else 30.0)
    size = args.size or (8 if args.sim else 2048)
    with tempfile.TemporaryDirectory(prefix="throttle-accuracy-") as folder:
        workdir = Path(folder)
        job = workdir / "job.yaml"
        job.write_text(f"operations:\n  - {{op: matmul, shapes: [[{size}, {size}], [{size}, {size}]]}}\n")
        lines = summarise("throttled", run_pair(job, duration, True, args.sim, workdir))
        if args.compare_unthrottled:
            lines += summarise("unthrottled", run_pair(job, duration, False, args.sim, workdir))
    where = "CUDA simulator (busy time is CPU time of the simulated kernels)" if args.sim else "GPU"
    print(f"\nThrottle accuracy on {where}; matmul {size}x{size} float32, {duration:.0f} s per pair\n")
    print("| run | share | operations | busy s | wall s | busy fraction | throttled s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
