"""Per-seed metrics of a replay, binned like the published analysis, and mean ± sd summaries.

Each event (a pod arriving) is binned to the nearest integer arrived % (0..max) and the metric is
averaged within the bin, as in the FGD artifact's `analysis_*_discrete.csv`. Empty bins (possible
only with huge pods) take the previous bin's value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tensorai.scheduler.sim.replay import ReplayResult

REPORT_POINTS = (100, 130)


def binned(arrived_pct: np.ndarray, values: np.ndarray, max_pct: int = 130) -> np.ndarray:
    """(max_pct+1,) mean of `values` per nearest-integer arrived % bin, NaN before the first event."""
    bins = np.clip(np.floor(arrived_pct + 0.5).astype(np.int64), 0, None)
    keep = bins <= max_pct
    sums = np.bincount(bins[keep], weights=values[keep], minlength=max_pct + 1)
    counts = np.bincount(bins[keep], minlength=max_pct + 1)
    out = np.full(max_pct + 1, np.nan)
    has = counts > 0
    out[has] = sums[has] / counts[has]
    last = np.nan
    for index in range(max_pct + 1):  # carry the last seen value over empty bins
        if np.isnan(out[index]):
            out[index] = last
        else:
            last = out[index]
    return out


@dataclass(slots=True)
class SeedMetrics:
    """What the JSON output holds per seed (curves are indexed by arrived %, 0..130)."""

    policy: str
    seed: int
    unallocated_gpu_pct: np.ndarray
    frag_amount_pct: np.ndarray  # fragmented GPU, % of capacity
    frag_rate_pct: np.ndarray  # fragmented GPU, % of idle GPU
    failures_by_shape: dict[str, int]
    arrived_pct_at_failure: dict[str, float | None]  # "1st", "10th", "100th" GPU-pod failure
    seconds: float
    pods: int

    def at(self, pct: int) -> float:
        return float(self.unallocated_gpu_pct[pct])


def seed_metrics(result: ReplayResult, max_pct: int = 130) -> SeedMetrics:
    capacity = result.capacity_milli
    allocated_pct = 100.0 * result.allocated_milli / capacity
    idle = capacity - result.allocated_milli
    frag_rate = np.where(idle > 0, 100.0 * result.frag_milli / np.maximum(idle, 1), 0.0)
    gpu_failures = np.flatnonzero(result.failed & (result.pod_gpu_milli > 0))
    at_failure: dict[str, float | None] = {}
    for label, nth in (("1st", 1), ("10th", 10), ("100th", 100)):
        at_failure[label] = float(result.arrived_pct[gpu_failures[nth - 1]]) if len(gpu_failures) >= nth else None
    return SeedMetrics(
        policy=result.policy,
        seed=result.seed,
        unallocated_gpu_pct=binned(result.arrived_pct, 100.0 - allocated_pct, max_pct),
        frag_amount_pct=binned(result.arrived_pct, 100.0 * result.frag_milli / capacity, max_pct),
        frag_rate_pct=binned(result.arrived_pct, frag_rate, max_pct),
        failures_by_shape=dict(sorted(result.failure_shapes.items())),
        arrived_pct_at_failure=at_failure,
        seconds=result.seconds,
        pods=len(result.arrived_pct),
    )


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN-free values; sd 0 for one value)."""
    clean = [v for v in values if not math.isnan(v)]
    if not clean:
        return math.nan, math.nan
    mean = sum(clean) / len(clean)
    if len(clean) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in clean) / (len(clean) - 1))


def seed_to_json(metrics: SeedMetrics) -> dict:
    def curve(values: np.ndarray) -> list[float | None]:
        return [None if math.isnan(v) else round(float(v), 4) for v in values]

    return {
        "seed": metrics.seed,
        "unallocated_gpu_pct": {str(p): round(metrics.at(p), 4) for p in REPORT_POINTS},
        "frag_amount_pct": {str(p): round(float(metrics.frag_amount_pct[p]), 4) for p in REPORT_POINTS},
        "frag_rate_pct": {str(p): round(float(metrics.frag_rate_pct[p]), 4) for p in REPORT_POINTS},
        "failures_by_shape": metrics.failures_by_shape,
        "arrived_pct_at_gpu_failure": metrics.arrived_pct_at_failure,
        "pods": metrics.pods,
        "seconds": round(metrics.seconds, 3),
        "curves": {
            "unallocated_gpu_pct": curve(metrics.unallocated_gpu_pct),
            "frag_amount_pct": curve(metrics.frag_amount_pct),
            "frag_rate_pct": curve(metrics.frag_rate_pct),
        },
    }
