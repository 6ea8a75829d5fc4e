"""Smoke test of tests/benchmarks/bench_kube_scheduler.py at a tiny size: its own cluster (no node),
10 fake GPU nodes per scheduler, 40 pods, one round each; every pod bound by each scheduler and the
table printed. Skips like the rest of the suite when no local cluster can start."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from . import binaries

sys.path.insert(0, str(binaries.REPO_ROOT / "tests" / "benchmarks"))


def _why_not() -> str | None:
    if os.environ.get("TENSORAI_E2E", "1") == "0":
        return "TENSORAI_E2E=0"
    return binaries.missing_for_local_cluster()


@pytest.mark.skipif(_why_not() is not None, reason=f"throughput benchmark skipped: {_why_not()}")
def test_benchmark_binds_every_pod_through_both_schedulers_and_prints_the_table(tmp_path: Path) -> None:
    import bench_kube_scheduler as bench

    lines: list[str] = []
    results = bench.benchmark(nodes=10, pods=40, rounds=1, qps=None, burst=None, creators=4, timeout_s=60,
                              out=lines.append, workdir=tmp_path / "cluster")
    by_scheduler = {r["scheduler"]: r for r in results["rounds"]}
    assert set(by_scheduler) == {bench.SCHEDULER_NAME, bench.PLAIN_SCHEDULER}
    for scheduler, result in by_scheduler.items():
        assert result["bound"] == 40, f"{scheduler} bound {result['bound']} of 40 pods"
        assert result["pods_per_s"] > 0
    assert by_scheduler[bench.SCHEDULER_NAME]["where"]["bind_calls"] >= 40  # the extender bound them
    table = "\n".join(lines)
    assert "| 0 | extender | 40/40 |" in table and "| 0 | alone | 40/40 |" in table, table
    assert "mean pods/s: with extender" in table and "ratio" in table
