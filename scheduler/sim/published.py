"""The FGD artifact's published curves (fgd_expected_results/analysis_allo_discrete.csv), if present.

Maps our policy names to the paper's: random -> 01-Random, binpack -> 04-GpuPacking,
bestfit -> 05-BestFit, fgd -> 06-FGD (spread and tensorai have no published counterpart).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

PUBLISHED_POLICY = {"random": "01-Random", "binpack": "04-GpuPacking", "bestfit": "05-BestFit", "fgd": "06-FGD"}
ALLOCATION_FILE = Path("fgd_expected_results") / "analysis_allo_discrete.csv"


def published_unallocated(trace_dir: Path, workload: str) -> dict[str, np.ndarray]:
    """{our policy: (seeds, 131) unallocated GPU % curves} for `workload`; empty if the file is absent."""
    path = trace_dir / ALLOCATION_FILE
    if not path.exists():
        return {}
    wanted = {paper: ours for ours, paper in PUBLISHED_POLICY.items()}
    curves: dict[str, list[list[float]]] = {}
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            name = row["workload"].removeprefix("openb_pod_list_")
            ours = wanted.get(row["sc_policy"])
            if name != workload or ours is None:
                continue
            values = []
            for pct in range(131):
                text = row.get(str(pct), "")
                values.append(100.0 - float(text) if text not in ("", None) else np.nan)
            curves.setdefault(ours, []).append(values)
    return {policy: np.array(rows) for policy, rows in curves.items()}
