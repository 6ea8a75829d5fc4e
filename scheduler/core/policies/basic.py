"""The classic policies: random, bestfit, binpack, spread (scores per GPU option, higher is better).

bestfit follows the FGD paper's baseline: 100 x (1 - 0.5 x cpu_left/128 vCPU - 0.5 x gpu_left/8 GPUs)
after placement, truncated to an integer; binpack follows its GPU-packing baseline (shared GPUs
first, then free GPUs on used nodes, untouched nodes last); spread prefers the emptiest node and GPU.
"""

from __future__ import annotations

import numpy as np

from tensorai.proto.contract import MILLI_PER_GPU
from tensorai.scheduler.core.cluster import effective_free_milli
from tensorai.scheduler.core.context import PolicyContext
from tensorai.scheduler.core.fit import Evaluation
from tensorai.scheduler.core.types import ClusterArrays, PodDemand

MAX_SPEC_CPU_MILLI = 128_000  # FGD simulator's normalisation constants
MAX_SPEC_GPU_MILLI = 8_000

Scores = tuple[np.ndarray, np.ndarray | None]


def _invalid_to_ninf(primary: np.ndarray, evaluation: Evaluation) -> np.ndarray:
    return np.where(evaluation.option_valid, primary, -np.inf)


def _gpu_left_after(cluster: ClusterArrays, evaluation: Evaluation) -> tuple[np.ndarray, np.ndarray]:
    free = effective_free_milli(cluster, evaluation.nodes)
    left = free.sum(axis=1)[:, None] - evaluation.option_milli.sum(axis=2)
    return free, left


def score_random(cluster: ClusterArrays, evaluation: Evaluation, demand: PodDemand,
                 context: PolicyContext) -> Scores:
    if context.rng is None:
        raise ValueError("the random policy needs PolicyContext.rng (randomness is handed in, never drawn)")
    draw = context.rng.random(len(evaluation.nodes))
    return _invalid_to_ninf(np.broadcast_to(draw[:, None], evaluation.option_valid.shape), evaluation), None


def score_bestfit(cluster: ClusterArrays, evaluation: Evaluation, demand: PodDemand,
                  context: PolicyContext) -> Scores:
    free, gpu_left = _gpu_left_after(cluster, evaluation)
    cpu_left = (cluster.node_cpu_free_milli[evaluation.nodes] - demand.cpu_milli)[:, None]
    raw = 1.0 - 0.5 * cpu_left / MAX_SPEC_CPU_MILLI - 0.5 * gpu_left / MAX_SPEC_GPU_MILLI
    primary = np.floor(raw * 100.0)
    tiebreak = -free.astype(np.float64) if evaluation.per_gpu else None  # tightest GPU within the node
    return _invalid_to_ninf(primary, evaluation), tiebreak


def score_binpack(cluster: ClusterArrays, evaluation: Evaluation, demand: PodDemand,
                  context: PolicyContext) -> Scores:
    free, _ = _gpu_left_after(cluster, evaluation)
    shape = evaluation.option_valid.shape
    if not demand.containers:
        return _invalid_to_ninf(np.zeros(shape), evaluation), None
    gpus = cluster.gpu_count[evaluation.nodes]
    fully_free = (free >= MILLI_PER_GPU).sum(axis=1)
    untouched = fully_free == gpus
    used = evaluation.option_milli > 0  # (n, O, G)
    full_used = (used & (free[:, None, :] >= MILLI_PER_GPU)).sum(axis=2)  # (n, O)
    shared_left_pct = np.where(used, free[:, None, :] * 100 // MILLI_PER_GPU, 0).sum(axis=2)
    score = np.maximum(100 - shared_left_pct // 10, 50).astype(np.float64)
    score = np.where(full_used > 0, np.maximum(50 - full_used, 33), score)
    untouched_score = np.maximum(33 - fully_free, fully_free)
    score = np.where(untouched[:, None], untouched_score[:, None], score)
    return _invalid_to_ninf(score.astype(np.float64), evaluation), None


def score_spread(cluster: ClusterArrays, evaluation: Evaluation, demand: PodDemand,
                 context: PolicyContext) -> Scores:
    free, gpu_left = _gpu_left_after(cluster, evaluation)
    capacity = np.maximum(cluster.gpu_count[evaluation.nodes], 1)[:, None] * MILLI_PER_GPU
    primary = np.floor(100.0 * gpu_left / capacity)
    tiebreak = free.astype(np.float64) if evaluation.per_gpu else None  # emptiest GPU within the node
    return _invalid_to_ninf(primary, evaluation), tiebreak
