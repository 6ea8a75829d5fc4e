"""The extender benchmark scripts run end to end on a tiny cluster (so they work when numbers are due)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "tests" / "benchmarks"


def run_script(name: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(BENCHMARKS / name), *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_extender_benchmark_prints_its_table() -> None:
    output = run_script("bench_extender.py", "--nodes", "40", "--pods", "100", "--measure", "30")
    rows = [line for line in output.splitlines() if re.match(r"\s+40\s+320\s+\d+\s+\d+ \|", line)]
    assert len(rows) == 2, output  # every node per request, and kube-scheduler's sample
    assert all(float(row.split("|")[4].split()[0]) > 0 for row in rows), output  # pods/s serial


def test_paired_ab_compares_two_checkouts_pod_by_pod() -> None:
    """This checkout against itself as the baseline: both bind every pod."""
    output = run_script("ab_extender.py", "--baseline", str(ROOT), "--nodes", "30", "--pods", "20", "--rounds", "1",
                        "--running", "60")
    bound = re.findall(r"(baseline|this): (\d+) bound, server CPU [\d.]+ ms/pod", output)
    assert sorted(bound) == [("baseline", "20"), ("this", "20")], output
