"""The per-GPU allocation of the run as a PNG (matplotlib Agg, no display needed).

Left: every GPU's allocation at the moment the cluster held the most milli-GPU (the pods sharing each
GPU stacked, with the GPU's share of 1000 as the bar's height). Right: the whole run as a timeline,
one lane per GPU, each pod a box from bind to finish whose height is its milli share - so sharing,
whole-GPU pods and the quota-limited pod starting only after another one ended are all visible.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from tensorai.demo.state import DemoState
from tensorai.proto import contract


def _spans(state: DemoState, end_s: float) -> dict[str, list[tuple[float, float, int, str]]]:
    spans: dict[str, list[tuple[float, float, int, str]]] = {}
    for run in state.pods.values():
        if run.bound_s is None:
            continue
        finished = run.finished_s if run.finished_s is not None else end_s
        for share in run.shares:
            spans.setdefault(share.uuid, []).append((run.bound_s, finished, share.milli, run.spec.name))
    return spans


def _peak_instant(spans: dict[str, list[tuple[float, float, int, str]]]) -> float:
    starts = sorted({start for entries in spans.values() for start, _, _, _ in entries})
    best, best_total = 0.0, -1
    for instant in starts:
        total = sum(m for entries in spans.values() for s, e, m, _ in entries if s <= instant < e)
        if total > best_total:
            best, best_total = instant, total
    return best


def plot_allocation(state: DemoState, path: Path) -> Path:
    """Write the PNG and return its path."""
    end_s = state.now()
    spans = _spans(state, end_s)
    peak_s = _peak_instant(spans)
    labels = [f"{gpu.node}/{gpu.index} {gpu.model}" for gpu in state.gpus]
    names = sorted({name for entries in spans.values() for *_, name in entries})
    palette = plt.get_cmap("tab20")
    colours = {name: palette(i % 20) for i, name in enumerate(names)}
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 0.55 * len(state.gpus) + 2.2),
                                         gridspec_kw={"width_ratios": [1, 2.2]})
    for row, gpu in enumerate(state.gpus):
        offset = 0
        for start, finish, milli, name in sorted(spans.get(gpu.uuid, [])):
            if start <= peak_s < finish:
                left.barh(row, milli, left=offset, color=colours[name], edgecolor="black", linewidth=0.5)
                left.text(offset + milli / 2, row, name, ha="center", va="center", fontsize=6)
                offset += milli
        placed: list[tuple[float, float, int, int]] = []  # first fit: lowest milli offset free for the span
        for start, finish, milli, name in sorted(spans.get(gpu.uuid, [])):
            base = 0
            taken = sorted((b, b + m) for s, e, b, m in placed if s < finish and start < e)
            for low, high in taken:
                if base + milli <= low:
                    break
                base = max(base, high)
            placed.append((start, finish, base, milli))
            bottom = row - 0.4 + 0.8 * base / contract.MILLI_PER_GPU
            height = 0.8 * milli / contract.MILLI_PER_GPU
            right.broken_barh([(start, finish - start)], (bottom, height), facecolors=colours[name],
                              edgecolor="black", linewidth=0.5)
            if finish - start > 1.5:
                right.text(start + 0.2, bottom + height / 2, name, va="center", fontsize=6)
    for axis in (left, right):
        axis.set_yticks(range(len(state.gpus)), labels, fontsize=8)
        axis.invert_yaxis()
        axis.grid(axis="x", alpha=0.3)
    left.set_xlim(0, contract.MILLI_PER_GPU)
    left.set_xlabel("milli-GPU allocated")
    left.set_title(f"per-GPU allocation at the busiest moment ({peak_s:.1f} s)", fontsize=10)
    right.set_xlabel("seconds since the demo started")
    right.set_title("every pod's share over the run (box height = milli share)", fontsize=10)
    right.axvline(peak_s, color="grey", linestyle="--", linewidth=0.8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
