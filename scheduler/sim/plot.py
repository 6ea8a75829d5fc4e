"""The paper-style figure: unallocated GPU % against arrived workload %, one curve per policy."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tensorai.scheduler.sim.metrics import SeedMetrics


def plot_curves(path: Path, results: dict[str, list[SeedMetrics]], published: dict[str, np.ndarray],
                title: str) -> None:
    """Mean curve (band = ± sd over seeds) of every policy run; published means dashed where known."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with warnings.catch_warnings():  # bins that only some seeds reach give all-NaN/1-value slices
        warnings.simplefilter("ignore", RuntimeWarning)
        _draw(plt, path, results, published, title)


def _draw(plt, path: Path, results: dict[str, list[SeedMetrics]], published: dict[str, np.ndarray],
          title: str) -> None:
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    x = np.arange(131)
    for policy, seeds in results.items():
        curves = np.array([m.unallocated_gpu_pct for m in seeds])
        mean = np.nanmean(curves, axis=0)
        line = left.plot(x, mean, label=policy)[0]
        if len(seeds) > 1:
            sd = np.nanstd(curves, axis=0, ddof=1)
            left.fill_between(x, mean - sd, mean + sd, color=line.get_color(), alpha=0.15)
        frag = np.nanmean(np.array([m.frag_amount_pct for m in seeds]), axis=0)
        right.plot(x, frag, label=policy, color=line.get_color())
        if policy in published:
            left.plot(x, np.nanmean(published[policy], axis=0), linestyle="--", color=line.get_color(),
                      label=f"{policy} (published)")
    for axis, label in ((left, "unallocated GPU (% of capacity)"), (right, "fragmented GPU (% of capacity)")):
        axis.set_xlabel("arrived workload (% of cluster GPU capacity)")
        axis.set_ylabel(label)
        axis.set_xlim(80, 130)
        axis.grid(alpha=0.3)
        # zoom on the full-load region where the policies differ (curves start high at 80 %)
        tops = [line.get_ydata()[95:].max() for line in axis.get_lines() if len(line.get_ydata()) > 95]
        if tops and np.isfinite(max(tops)):
            axis.set_ylim(0, max(tops) * 1.15)
    left.legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
