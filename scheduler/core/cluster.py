"""Builders for `ClusterArrays`: the hand-made clusters of the tests and the simulator's trace cluster.

The extender's cluster view fills the same arrays from Node inventories; these helpers are for
callers that start from a plain list of nodes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tensorai.proto.contract import MILLI_PER_GPU
from tensorai.scheduler.core.types import ClusterArrays, NodeSpec

NodeTuple = tuple[str, int, int, int, str, int, int]  # name, cpu_milli, memory_mib, gpus, model, gpu MiB, reserved MiB


def empty_cluster(node_count: int, max_gpus: int) -> ClusterArrays:
    """A cluster of `node_count` nodes without GPUs, CPU or memory; callers fill rows in."""
    if node_count < 0 or max_gpus < 0:
        raise ValueError(f"node_count and max_gpus must be >= 0, got {node_count} and {max_gpus}")
    width = max(max_gpus, 1)  # keep (N, G) arrays two-dimensional even for CPU-only clusters
    return ClusterArrays(
        node_names=[f"node-{index}" for index in range(node_count)],
        models=[],
        node_model=np.full(node_count, -1, dtype=np.int32),
        node_cpu_free_milli=np.zeros(node_count, dtype=np.int64),
        node_memory_free_mib=np.zeros(node_count, dtype=np.int64),
        node_schedulable=np.ones(node_count, dtype=bool),
        gpu_count=np.zeros(node_count, dtype=np.int32),
        gpu_free_milli=np.full((node_count, width), -1, dtype=np.int32),
        gpu_free_memory_mib=np.zeros((node_count, width), dtype=np.int64),
        gpu_usable_memory_mib=np.zeros((node_count, width), dtype=np.int64),
        gpu_healthy=np.zeros((node_count, width), dtype=bool),
        gpu_numa=np.full((node_count, width), -1, dtype=np.int32),
        gpu_uuids=[[] for _ in range(node_count)],
        gpu_exclusive=np.zeros((node_count, width), dtype=bool),
        gpu_groups={},
    )


def _as_spec(node: NodeSpec | Sequence) -> NodeSpec:
    if isinstance(node, NodeSpec):
        return node
    return NodeSpec(*node)


def cluster_from_nodes(nodes: Sequence[NodeSpec | NodeTuple]) -> ClusterArrays:
    """A fresh cluster (everything free, every GPU healthy) from NodeSpecs or plain tuples.

    Tuples are `(name, cpu_milli, memory_mib, gpu_count, model, gpu_memory_mib, reserved_mib)`;
    the last two may be left off (16 GiB, no reserve).
    """
    specs = [_as_spec(node) for node in nodes]
    max_gpus = max((spec.gpu_count for spec in specs), default=0)
    cluster = empty_cluster(len(specs), max_gpus)
    names_seen: set[str] = set()
    for index, spec in enumerate(specs):
        if spec.name in names_seen:
            raise ValueError(f"node name {spec.name!r} appears twice; node names must be unique")
        names_seen.add(spec.name)
        if spec.gpu_count < 0 or spec.cpu_milli < 0 or spec.memory_mib < 0:
            raise ValueError(f"node {spec.name!r}: gpu_count, cpu_milli and memory_mib must be >= 0")
        if spec.gpu_count and not 0 <= spec.reserved_mib < spec.gpu_memory_mib:
            raise ValueError(f"node {spec.name!r}: need 0 <= reserved_mib < gpu_memory_mib")
        cluster.node_names[index] = spec.name
        cluster.node_cpu_free_milli[index] = spec.cpu_milli
        cluster.node_memory_free_mib[index] = spec.memory_mib
        count = spec.gpu_count
        cluster.gpu_count[index] = count
        if count:
            if spec.model not in cluster.models:
                cluster.models.append(spec.model)
            cluster.node_model[index] = cluster.models.index(spec.model)
            usable = spec.gpu_memory_mib - spec.reserved_mib
            cluster.gpu_free_milli[index, :count] = MILLI_PER_GPU
            cluster.gpu_usable_memory_mib[index, :count] = usable
            cluster.gpu_free_memory_mib[index, :count] = usable
            cluster.gpu_healthy[index, :count] = True
            if spec.gpu_numa is not None:
                if len(spec.gpu_numa) != count:
                    raise ValueError(f"node {spec.name!r}: gpu_numa needs one entry per GPU")
                cluster.gpu_numa[index, :count] = spec.gpu_numa
            if spec.gpu_uuids is not None:
                if len(spec.gpu_uuids) != count:
                    raise ValueError(f"node {spec.name!r}: gpu_uuids needs one entry per GPU")
                cluster.gpu_uuids[index] = list(spec.gpu_uuids)
            else:
                cluster.gpu_uuids[index] = [f"{spec.name}-gpu{slot}" for slot in range(count)]
    return cluster


def copy_cluster(cluster: ClusterArrays) -> ClusterArrays:
    """A deep copy, so a simulation or a what-if never touches the caller's arrays."""
    return ClusterArrays(
        node_names=list(cluster.node_names),
        models=list(cluster.models),
        node_model=cluster.node_model.copy(),
        node_cpu_free_milli=cluster.node_cpu_free_milli.copy(),
        node_memory_free_mib=cluster.node_memory_free_mib.copy(),
        node_schedulable=cluster.node_schedulable.copy(),
        gpu_count=cluster.gpu_count.copy(),
        gpu_free_milli=cluster.gpu_free_milli.copy(),
        gpu_free_memory_mib=cluster.gpu_free_memory_mib.copy(),
        gpu_usable_memory_mib=cluster.gpu_usable_memory_mib.copy(),
        gpu_healthy=cluster.gpu_healthy.copy(),
        gpu_numa=cluster.gpu_numa.copy(),
        gpu_uuids=[list(uuids) for uuids in cluster.gpu_uuids],
        gpu_exclusive=cluster.gpu_exclusive.copy(),
        gpu_groups=dict(cluster.gpu_groups),
    )


def effective_free_milli(cluster: ClusterArrays, nodes: np.ndarray | None = None) -> np.ndarray:
    """Free milli-GPU per slot that new pods could use: 0 for padding, unhealthy and exclusive GPUs."""
    if nodes is None:
        free = cluster.gpu_free_milli
        usable = cluster.gpu_healthy & ~cluster.gpu_exclusive
    else:
        free = cluster.gpu_free_milli[nodes]
        usable = cluster.gpu_healthy[nodes] & ~cluster.gpu_exclusive[nodes]
    return np.where(usable & (free > 0), free, 0).astype(np.int64)


def cluster_rows(cluster: ClusterArrays, rows: np.ndarray) -> ClusterArrays:
    """A copy of only the nodes at `rows` (row i of the result is node rows[i]), for a what-if on a few nodes.

    One fancy-indexing copy per array, so taking 500 rows of a 5,000-node cluster copies 500 rows,
    not 5,000 (`copy_cluster` per candidate was what made preemption slow). Anti-affinity groups are
    carried over with their node renumbered; models keep their ids. `rows` must not repeat a node.
    """
    rows = np.asarray(rows, dtype=np.int64)
    listed = rows.tolist()
    renumbered = {node: position for position, node in enumerate(listed)}
    if len(renumbered) != len(listed):
        raise ValueError("cluster_rows: rows name a node twice")
    groups = {}
    for (node, slot), names in cluster.gpu_groups.items():
        position = renumbered.get(node)
        if position is not None:
            groups[(position, slot)] = names
    return ClusterArrays(
        node_names=[cluster.node_names[node] for node in listed],
        models=list(cluster.models),
        node_model=cluster.node_model[rows],
        node_cpu_free_milli=cluster.node_cpu_free_milli[rows],
        node_memory_free_mib=cluster.node_memory_free_mib[rows],
        node_schedulable=cluster.node_schedulable[rows],
        gpu_count=cluster.gpu_count[rows],
        gpu_free_milli=cluster.gpu_free_milli[rows],
        gpu_free_memory_mib=cluster.gpu_free_memory_mib[rows],
        gpu_usable_memory_mib=cluster.gpu_usable_memory_mib[rows],
        gpu_healthy=cluster.gpu_healthy[rows],
        gpu_numa=cluster.gpu_numa[rows],
        gpu_uuids=[list(cluster.gpu_uuids[node]) for node in listed],
        gpu_exclusive=cluster.gpu_exclusive[rows],
        gpu_groups=groups,
    )
