"""A built-in cluster and workload shaped like openb, so `tensorai-sim` runs without the trace.

Node mix and pod shape mix follow the openb statistics (Alibaba cluster-trace-gpu-v2023): counts of
each node type and the most frequent pod shapes, scaled down. Generated deterministically from a
seed; no trace data is bundled, only these aggregate counts.
"""

from __future__ import annotations

import numpy as np

from tensorai.scheduler.core.requests import simple_demand
from tensorai.scheduler.core.shapes import OPENB_SHAPE_MIX
from tensorai.scheduler.core.types import NodeSpec, PodDemand
from tensorai.scheduler.sim.trace import MODEL_MEMORY_MIB, PodTrace

# (cpu_milli, memory_mib, gpus, model, nodes in openb's 1,213-node GPU cluster)
OPENB_NODE_MIX: tuple[tuple[int, int, int, str, int], ...] = (
    (96000, 393216, 8, "G2", 549), (104000, 524288, 2, "T4", 387), (16000, 122880, 2, "P100", 107),
    (128000, 786432, 8, "G3", 39), (32000, 131072, 4, "V100M16", 28), (64000, 262144, 2, "P100", 22),
    (96000, 786432, 8, "V100M32", 21), (8000, 32768, 1, "V100M16", 19), (96000, 393216, 4, "T4", 17),
    (48000, 376832, 4, "V100M32", 9), (64000, 262144, 8, "V100M16", 7), (8000, 61440, 1, "P100", 3),
    (8000, 61440, 2, "P100", 2), (128000, 1048576, 1, "A10", 2), (82000, 344064, 8, "V100M16", 1),
)


def synthetic_nodes(scale: float = 0.1) -> list[NodeSpec]:
    """About `scale` x the openb cluster (every node type kept, at least one node each)."""
    nodes: list[NodeSpec] = []
    for cpu, memory, gpus, model, count in OPENB_NODE_MIX:
        for _ in range(max(1, round(count * scale))):
            nodes.append(NodeSpec(f"syn-node-{len(nodes):04d}", cpu, memory, gpus, model,
                                  MODEL_MEMORY_MIB.get(model, 16384), 0))
    return nodes


def synthetic_pods(nodes: list[NodeSpec], seed: int = 0, demand_fraction: float = 0.98) -> PodTrace:
    """Pods drawn from the openb shape mix until their GPU request reaches `demand_fraction` x capacity."""
    rng = np.random.default_rng(seed)
    weights = np.array([pods for *_rest, pods in OPENB_SHAPE_MIX], dtype=np.float64)
    capacity = sum(node.gpu_count for node in nodes) * 1000
    picks: list[int] = []
    total = 0
    while True:
        index = int(rng.choice(len(OPENB_SHAPE_MIX), p=weights / weights.sum()))
        cpu, milli, count, memory, _ = OPENB_SHAPE_MIX[index]
        if total + milli * count > demand_fraction * capacity:
            break
        total += milli * count
        picks.append(index)
    demands: dict[int, PodDemand] = {}
    rows = [OPENB_SHAPE_MIX[i] for i in picks]
    for index in set(picks):
        cpu, milli, count, memory, _ = OPENB_SHAPE_MIX[index]
        demands[index] = simple_demand(cpu, memory, milli, count, name=f"shape-{index}")
    return PodTrace(
        names=[f"syn-pod-{i:05d}" for i in range(len(picks))],
        cpu_milli=np.array([r[0] for r in rows], dtype=np.int64),
        memory_mib=np.array([r[3] for r in rows], dtype=np.int64),
        gpu_count=np.array([r[2] for r in rows], dtype=np.int64),
        gpu_milli=np.array([r[1] for r in rows], dtype=np.int64),
        gpu_spec=["" for _ in picks],
        demands=[demands[i] for i in picks],
    )
