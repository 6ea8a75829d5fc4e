"""bench_preempt.py and bench_soak.py run end to end on a tiny cluster (so they work when numbers are due)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent / "benchmarks"


def run_script(name: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(BENCHMARKS / name), *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_preempt_benchmark_prints_preempt_time_and_the_filter_latency_beside_it() -> None:
    output = run_script("bench_preempt.py", "--nodes", "40", "--pods", "100", "--candidates", "10", "--rounds", "2")
    row = next(line for line in output.splitlines() if re.match(r"\s+40\s+10\s+\d+", line))
    cells = row.split("|")
    assert float(cells[1].split("/")[0]) > 0 and int(cells[2]) > 0, output  # seconds, nodes kept
    assert float(cells[3].split("/")[1].split()[0]) > 0, output  # filter p99 ms


def test_soak_benchmark_prints_peak_rss_against_the_manifest_limits() -> None:
    output = run_script("bench_soak.py", "--nodes", "30", "--pods", "60", "--flood-s", "1", "--concurrent", "1",
                        "--webhook-concurrent", "2")
    rows = [line for line in output.splitlines() if line.startswith("| ") and "%" in line]
    assert len(rows) == 8, output  # six extender attacks, two webhook ones
    assert all(line.rstrip(" |").endswith("%") for line in rows), output
    assert "| 1024 |" in rows[0] and "| 256 |" in rows[-1], output  # the Deployments' limits, read from the manifests
    assert "413" in next(line for line in rows if line.startswith("| body over the limit")), output
