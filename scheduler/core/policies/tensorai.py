"""tensorai: our default policy, FGD's fragmentation gradient plus rules that keep big holes whole.

Starts from FGD's quantised score (its coarse integer buckets plus a fixed node order behave like
first-fit among equally good nodes, which is part of why FGD works) and adds:
- sharing pods stay off untouched 8-GPU nodes whenever any other node fits them: an 8-GPU node
  opened by a 0.25-GPU pod can no longer take an 8-GPU pod.
"""

from __future__ import annotations

import numpy as np

from tensorai.proto.contract import MILLI_PER_GPU
from tensorai.scheduler.core.cluster import effective_free_milli
from tensorai.scheduler.core.context import PolicyContext
from tensorai.scheduler.core.fit import Evaluation
from tensorai.scheduler.core.policies.fgd import fragmentation_gain, quantise
from tensorai.scheduler.core.types import ClusterArrays, PodDemand

BIG_NODE_GPUS = 8
_PENALTY = 1000.0  # larger than any quantised score: a lexicographic "only if nothing else fits"


def score_tensorai(cluster: ClusterArrays, evaluation: Evaluation, demand: PodDemand,
                   context: PolicyContext) -> tuple[np.ndarray, np.ndarray | None]:
    score = quantise(fragmentation_gain(cluster, evaluation, demand, context))
    app = [c for c in demand.containers if not c.init]
    sharing = len(app) == 1 and app[0].gpu_count == 1 and app[0].milli < MILLI_PER_GPU
    if sharing:
        nodes = evaluation.nodes
        free = effective_free_milli(cluster, nodes)
        gpus = cluster.gpu_count[nodes]
        untouched_big = (gpus >= BIG_NODE_GPUS) & ((free >= MILLI_PER_GPU).sum(axis=1) == gpus)
        score = score - np.where(untouched_big, _PENALTY, 0.0)[:, None]
    return score, None
