"""FGD's fragmentation measure (Weng et al., USENIX ATC'23), compiled with numba for the hot path.

For a node with free GPU amounts g_i and a target workload of shapes m with probabilities p_m,
shape m's fragment F_n(m) is the node's whole free GPU amount if m needs no GPU, cannot use the
node's model, lacks CPU or lacks enough GPUs; otherwise it is the sum of the g_i smaller than m's
per-GPU milli. The node's fragmentation is F_n = sum_m p_m F_n(m) (in milli-GPU).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from tensorai.scheduler.core.shapes import ShapeArrays

_FULL = 1000


@njit(cache=True, nogil=True)
def _frag_row(free, cpu_free, model, s_cpu, s_milli, s_count, s_model_ok, s_p):  # pragma: no cover - jitted
    total = 0
    for slot in range(free.shape[0]):
        if free[slot] > 0:
            total += free[slot]
    if total == 0:
        return 0.0
    frag = 0.0
    for m in range(s_p.shape[0]):
        if s_count[m] == 0 or model < 0 or not s_model_ok[m, model] or cpu_free < s_cpu[m]:
            frag += s_p[m] * total
            continue
        milli = s_milli[m]
        small = 0
        if milli < _FULL:
            for slot in range(free.shape[0]):
                if 0 < free[slot] < milli:
                    small += free[slot]
        else:
            full = 0
            for slot in range(free.shape[0]):
                if free[slot] >= _FULL:
                    full += 1
                elif free[slot] > 0:
                    small += free[slot]
            if full < s_count[m]:
                small = total
        frag += s_p[m] * small
    return frag


@njit(cache=True, nogil=True)
def _frag_nodes(free, cpu_free, model, s_cpu, s_milli, s_count, s_model_ok, s_p):  # pragma: no cover - jitted
    out = np.zeros(free.shape[0])
    for row in range(free.shape[0]):
        out[row] = _frag_row(free[row], cpu_free[row], model[row], s_cpu, s_milli, s_count, s_model_ok, s_p)
    return out


@njit(cache=True, nogil=True)
def _frag_delta(free, cpu_free, model, option_milli, option_valid, cpu_demand,
                s_cpu, s_milli, s_count, s_model_ok, s_p):  # pragma: no cover - jitted
    rows, options, width = option_milli.shape
    out = np.full((rows, options), np.nan)
    after = np.zeros(width, dtype=np.int64)
    for row in range(rows):
        any_valid = False
        for option in range(options):
            if option_valid[row, option]:
                any_valid = True
        if not any_valid:
            continue
        before = _frag_row(free[row], cpu_free[row], model[row], s_cpu, s_milli, s_count, s_model_ok, s_p)
        for option in range(options):
            if not option_valid[row, option]:
                continue
            for slot in range(width):
                after[slot] = free[row, slot] - option_milli[row, option, slot]
            frag_after = _frag_row(after, cpu_free[row] - cpu_demand, model[row], s_cpu, s_milli, s_count,
                                   s_model_ok, s_p)
            out[row, option] = before - frag_after
    return out


def node_fragmentation(free_milli: np.ndarray, cpu_free_milli: np.ndarray, node_model: np.ndarray,
                       shapes: ShapeArrays) -> np.ndarray:
    """F_n in milli-GPU for each row; free_milli (n, G) must already be 0 for unusable slots."""
    return _frag_nodes(np.ascontiguousarray(free_milli, dtype=np.int64),
                       np.ascontiguousarray(cpu_free_milli, dtype=np.int64),
                       np.ascontiguousarray(node_model, dtype=np.int64),
                       shapes.cpu_milli, shapes.gpu_milli, shapes.gpu_count, shapes.model_ok, shapes.probability)


def fragmentation_delta(free_milli: np.ndarray, cpu_free_milli: np.ndarray, node_model: np.ndarray,
                        option_milli: np.ndarray, option_valid: np.ndarray, cpu_demand_milli: int,
                        shapes: ShapeArrays) -> np.ndarray:
    """(n, O) F_n(before) - F_n(after) for each option; NaN where the option is invalid."""
    return _frag_delta(np.ascontiguousarray(free_milli, dtype=np.int64),
                       np.ascontiguousarray(cpu_free_milli, dtype=np.int64),
                       np.ascontiguousarray(node_model, dtype=np.int64),
                       np.ascontiguousarray(option_milli, dtype=np.int64),
                       np.ascontiguousarray(option_valid),
                       int(cpu_demand_milli),
                       shapes.cpu_milli, shapes.gpu_milli, shapes.gpu_count, shapes.model_ok, shapes.probability)
