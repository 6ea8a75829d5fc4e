"""Fragmentation Gradient Descent (FGD): place where the expected fragmentation grows least.

Score of an option = floor(100 x sigmoid(delta / 1000)) with delta = F_n(before) - F_n(after) in
milli-GPU, exactly as the published simulator quantises it; ties go to the node order and, within a
node, to the first GPU index with the best score.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from tensorai.scheduler.core.cluster import effective_free_milli
from tensorai.scheduler.core.context import PolicyContext
from tensorai.scheduler.core.fit import Evaluation
from tensorai.scheduler.core.policies.fragmentation import fragmentation_delta
from tensorai.scheduler.core.shapes import ShapeArrays, default_workload
from tensorai.scheduler.core.types import ClusterArrays, PodDemand

DEFAULT_WORKLOAD = default_workload()  # until a workload is known or learned


def target_arrays(cluster: ClusterArrays, context: PolicyContext) -> ShapeArrays:
    """The context's target workload over this cluster's models (the openb mix if none is known)."""
    workload = context.target() or DEFAULT_WORKLOAD
    return workload.arrays(cluster.models)


def fragmentation_gain(cluster: ClusterArrays, evaluation: Evaluation, demand: PodDemand,
                       context: PolicyContext) -> np.ndarray:
    """(n, O) delta = F(before) - F(after) per option, NaN where invalid."""
    nodes = evaluation.nodes
    return fragmentation_delta(effective_free_milli(cluster, nodes), cluster.node_cpu_free_milli[nodes],
                               cluster.node_model[nodes], evaluation.option_milli, evaluation.option_valid,
                               demand.cpu_milli, target_arrays(cluster, context))


@njit(cache=True, nogil=True)
def quantise_one(delta: float) -> float:  # pragma: no cover - jitted
    """floor(100 x sigmoid(delta/1000)) of one valid delta (compiled: `onegpu` calls it per option)."""
    return np.floor(100.0 / (1.0 + math.exp(-delta / 1000.0)))


@njit(cache=True, nogil=True)
def _quantise(delta):  # pragma: no cover - jitted
    flat = delta.ravel()
    out = np.empty(flat.shape[0])
    for index in range(flat.shape[0]):
        out[index] = -np.inf if np.isnan(flat[index]) else quantise_one(flat[index])
    return out.reshape(delta.shape)


def quantise(delta: np.ndarray) -> np.ndarray:
    """floor(100 x sigmoid(delta/1000)); -inf for NaN (invalid).

    Compiled, and one exp for every caller: the general path and the one-GPU fast path
    (`policies.onegpu`) must agree to the last bit, and numpy's and libm's exp may differ in it.
    """
    return _quantise(np.ascontiguousarray(delta, dtype=np.float64))


def score_fgd(cluster: ClusterArrays, evaluation: Evaluation, demand: PodDemand,
              context: PolicyContext) -> tuple[np.ndarray, np.ndarray | None]:
    return quantise(fragmentation_gain(cluster, evaluation, demand, context)), None
