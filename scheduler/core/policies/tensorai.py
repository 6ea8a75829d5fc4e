"""tensorai: our default policy: FGD for whole GPUs, a sharper fragmentation view for GPU shares.

Measured on the openb trace (docs/simulator.md), the GPUs left idle near full load are almost all
slivers on shared GPUs. FGD scores a share's options against the whole target workload, in which
whole-GPU and CPU-only tasks cannot use ANY partly used GPU, so every leftover looks almost equally
bad; its coarse integer score then treats many choices as equal and the node order picks, often a
fresh GPU or a mid-sized sliver while a GPU the share would nearly fill sits on another node.
For a sharing pod, tensorai ranks options lexicographically:

1. never an untouched 8-GPU node while any other node fits (an 8-GPU node opened by a 0.25-GPU pod
   can no longer take an 8-GPU pod) - only when whole-GPU tasks carry at least half of the target's
   GPU demand and under 5 % of tasks are tied to GPU models: with few whole-GPU tasks there is
   nothing to protect, and with model-bound tasks the smaller nodes are what those tasks need;
2. best fit for small leftovers: the fewer milli left on the chosen GPU the better, in 10-milli steps,
   for leftovers under TIGHT_FIT_MILLI; larger leftovers all rank the same;
3. FGD's fragmentation gradient measured against the SHARING shapes of the target workload only
   (which slivers a future share could still use), in SHARE_STEP_MILLI buckets;
4. FGD's own quantised score floor(100 x sigmoid(delta/1000)); then the node order.

When whole-GPU tasks carry under 30 % of the target's GPU demand (nearly all-sharing workloads), the
rules above lost to FGD on the openb variants and tensorai is plain FGD.
Whole-GPU and CPU-only pods use FGD's score unchanged: on the trace, every finer rule for them that
was tried lost to FGD's coarse score plus the node order (which behaves like first fit).
Every term depends only on the node's own arrays and the target workload, so the score cache is exact.
"""

from __future__ import annotations

import numpy as np

from tensorai.proto.contract import MILLI_PER_GPU
from tensorai.scheduler.core.cluster import effective_free_milli
from tensorai.scheduler.core.context import PolicyContext
from tensorai.scheduler.core.fit import Evaluation
from tensorai.scheduler.core.policies.fgd import DEFAULT_WORKLOAD, quantise
from tensorai.scheduler.core.policies.fragmentation import fragmentation_delta
from tensorai.scheduler.core.types import ClusterArrays, PodDemand

BIG_NODE_GPUS = 8
TIGHT_FIT_MILLI = 100  # leftovers below this are ranked by size (near-perfect fits)
FIT_STEP_MILLI = 10  # openb shares are multiples of 10 milli
SHARE_STEP_MILLI = 20  # bucket of the sharing-only fragmentation gradient
MIN_WHOLE_SHARE = 0.3  # below this whole-GPU share of demand, tensorai is plain FGD
BIG_NODE_RULE_WHOLE_SHARE = 0.5  # the untouched-8-GPU rule needs this whole-GPU share of demand ...
BIG_NODE_RULE_MAX_CONSTRAINED = 0.05  # ... and at most this share of model-bound tasks
# Multipliers that keep the ranking lexicographic: quantised FGD is 0..99; the sharing gradient bucket
# is at most 8 GPUs x 1000 / SHARE_STEP_MILLI = 400 in magnitude; the fit rank is 0..20.
_SHARE_WEIGHT = 100.0
_FIT_WEIGHT = 1e6
_BIG_NODE_PENALTY = 1e9


def _single_share(demand: PodDemand) -> int | None:
    app = [c for c in demand.containers if not c.init]
    if len(app) == 1 and app[0].gpu_count == 1 and app[0].milli < MILLI_PER_GPU:
        return app[0].milli
    return None


def score_tensorai(cluster: ClusterArrays, evaluation: Evaluation, demand: PodDemand,
                   context: PolicyContext) -> tuple[np.ndarray, np.ndarray | None]:
    nodes = evaluation.nodes
    workload = context.target() or DEFAULT_WORKLOAD
    free = effective_free_milli(cluster, nodes)
    cpu_free, node_model = cluster.node_cpu_free_milli[nodes], cluster.node_model[nodes]

    def gradient(target) -> np.ndarray:
        return fragmentation_delta(free, cpu_free, node_model, evaluation.option_milli, evaluation.option_valid,
                                   demand.cpu_milli, target.arrays(cluster.models))

    fgd = quantise(gradient(workload))
    milli = _single_share(demand)
    sharing = workload.sharing_only()
    whole_share = workload.whole_gpu_demand_share()
    if milli is None or not evaluation.per_gpu or sharing is None or whole_share < MIN_WHOLE_SHARE:
        return fgd, None
    share_delta = gradient(sharing)
    share_rank = np.floor(np.nan_to_num(share_delta, nan=0.0) / SHARE_STEP_MILLI)
    left = free - milli  # (n, G): option o = GPU slot o
    fit_rank = np.floor(np.minimum(left, TIGHT_FIT_MILLI) / FIT_STEP_MILLI)
    gpus = cluster.gpu_count[nodes]
    untouched_big = (gpus >= BIG_NODE_GPUS) & ((free >= MILLI_PER_GPU).sum(axis=1) == gpus)
    if whole_share < BIG_NODE_RULE_WHOLE_SHARE or workload.constrained_share() > BIG_NODE_RULE_MAX_CONSTRAINED:
        untouched_big[:] = False
    score = (fgd + share_rank * _SHARE_WEIGHT - fit_rank * _FIT_WEIGHT
             - np.where(untouched_big, _BIG_NODE_PENALTY, 0.0)[:, None])
    return np.where(evaluation.option_valid, score, -np.inf), None
