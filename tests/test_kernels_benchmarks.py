"""The GPU benchmark scripts run end to end on the simulator (so they work when a GPU run is due)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent / "benchmarks"


def run_script(name: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / name), "--sim", *args],
        env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_kernel_benchmark_prints_a_table_with_every_case() -> None:
    output = run_script("bench_kernels.py")
    for case in ("matmul f32", "fused gemm+bias+gelu", "einsum bhqd,bhkd->bhqk", "softmax rows", "layernorm rows"):
        assert f"| {case}" in output
    assert "| case | shape | time (ms) | rate | floor (ms) |" in output


def test_throttle_accuracy_reports_the_ratio_of_two_shares() -> None:
    output = run_script("throttle_accuracy.py", "--duration-s", "2")
    assert "| throttled | 0.25 |" in output and "| throttled | 0.75 |" in output
    assert "ratio 0.25/0.75 | ideal 0.333" in output
