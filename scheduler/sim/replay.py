"""Replay a pod stream through the scheduling core, exactly as the FGD paper's simulator does.

Per seed: shuffle the pod list, append uniform draws with replacement until the next draw would push
the arrived GPU request above `arrive` x capacity (lists that already exceed it lose random pods
instead), and use a random node permutation as the tie-break order. Pods arrive one at a time and
never leave; a pod that fits nowhere fails and the replay goes on. Placement is `core.placement.place`
and `apply_placement`: the same functions the extender calls.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from tensorai.scheduler.core.cluster import cluster_from_nodes, effective_free_milli
from tensorai.scheduler.core.context import PolicyContext
from tensorai.scheduler.core.placement import apply_placement, place
from tensorai.scheduler.core.policies.fragmentation import node_fragmentation
from tensorai.scheduler.core.shapes import OnlineWorkload, TargetWorkload
from tensorai.scheduler.core.types import NodeSpec, PodDemand

ONLINE_SUFFIX = "-online"  # "tensorai-online": learns the target workload from the pods seen so far


@dataclass(slots=True)
class Stream:
    """One seed's arrival order (indexes into the pod list) and node tie-break order."""

    seed: int
    pod_indexes: np.ndarray
    node_order: np.ndarray


def build_stream(pod_gpu_milli: np.ndarray, node_count: int, capacity_milli: int, seed: int,
                 arrive: float = 1.3) -> Stream:
    """The paper's protocol for one seed (see module docstring)."""
    rng = np.random.default_rng(seed)
    node_order = rng.permutation(node_count)
    count = len(pod_gpu_milli)
    order = rng.permutation(count)
    target = arrive * capacity_milli
    total = int(pod_gpu_milli.sum())
    if total > target:  # e.g. multigpu30/40/50: drop random pods until the list fits the target
        removal = rng.permutation(order.size)
        removed_milli = np.cumsum(pod_gpu_milli[order[removal]])
        drop = int(np.searchsorted(removed_milli, total - target, side="left")) + 1
        keep = np.ones(order.size, dtype=bool)
        keep[removal[:drop]] = False
        return Stream(seed, order[keep], node_order)
    extra: list[int] = []
    while True:
        draws = rng.integers(0, count, size=1024)
        stop = False
        for draw in draws.tolist():
            if total + pod_gpu_milli[draw] > target:
                stop = True
                break
            total += int(pod_gpu_milli[draw])
            extra.append(draw)
        if stop:
            break
    return Stream(seed, np.concatenate([order, np.asarray(extra, dtype=np.int64)]), node_order)


@dataclass(slots=True)
class ReplayResult:
    """Per-event series of one replay (event i = after pod i arrived)."""

    policy: str
    seed: int
    capacity_milli: int
    arrived_pct: np.ndarray  # (E,) cumulative GPU request of arrived pods, % of capacity
    allocated_milli: np.ndarray  # (E,) int64
    frag_milli: np.ndarray  # (E,) float: sum of F_n against the target workload
    failed: np.ndarray  # (E,) bool: the pod did not fit
    pod_gpu_milli: np.ndarray  # (E,) GPU request of each arrived pod
    failure_shapes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def shape_label(gpu_milli: int, gpu_count: int) -> str:
    if gpu_count == 0 or gpu_milli == 0:
        return "cpu-only"
    if gpu_milli < 1000:
        return f"{gpu_milli / 1000:.2f} GPU"
    return f"{gpu_count} GPU"


def replay(nodes: Sequence[NodeSpec], demands: Sequence[PodDemand], stream: Stream, policy: str,
           workload: TargetWorkload, *, progress: Callable[[int], None] | None = None) -> ReplayResult:
    """Replay `stream` (indexes into `demands`) under `policy` ("<name>" or "<name>-online")."""
    import time

    started = time.perf_counter()
    cluster = cluster_from_nodes(nodes)
    online = policy.endswith(ONLINE_SUFFIX)
    name = policy.removesuffix(ONLINE_SUFFIX)
    context = PolicyContext(workload=None if online else workload,
                            online=OnlineWorkload() if online else None,
                            rng=np.random.default_rng(stream.seed))
    capacity = int(cluster.gpu_count.sum()) * 1000
    metric_shapes = workload.arrays(cluster.models)
    frag = node_fragmentation(effective_free_milli(cluster), cluster.node_cpu_free_milli, cluster.node_model,
                              metric_shapes)
    frag_total = float(frag.sum())
    events = len(stream.pod_indexes)
    arrived = np.zeros(events)
    allocated = np.zeros(events, dtype=np.int64)
    frag_series = np.zeros(events)
    failed = np.zeros(events, dtype=bool)
    request = np.zeros(events, dtype=np.int64)
    failures: dict[str, int] = {}
    arrived_milli = allocated_milli = 0
    for event, pod in enumerate(stream.pod_indexes.tolist()):
        demand = demands[pod]
        gpu_milli = sum(c.milli * c.gpu_count for c in demand.containers)
        request[event] = gpu_milli
        arrived_milli += gpu_milli
        if context.online is not None:
            context.online.observe(demand)
        placement = place(cluster, demand, name, node_order=stream.node_order, context=context)
        if placement is None:
            failed[event] = True
            label = shape_label(demand.containers[0].milli if demand.containers else 0,
                                demand.containers[0].gpu_count if demand.containers else 0)
            failures[label] = failures.get(label, 0) + 1
        else:
            apply_placement(cluster, demand, placement)
            allocated_milli += gpu_milli
            node = placement.node_index
            row = slice(node, node + 1)
            new = node_fragmentation(effective_free_milli(cluster, np.arange(node, node + 1)),
                                     cluster.node_cpu_free_milli[row], cluster.node_model[row], metric_shapes)[0]
            frag_total += new - frag[node]
            frag[node] = new
        arrived[event] = 100.0 * arrived_milli / capacity
        allocated[event] = allocated_milli
        frag_series[event] = frag_total
        if progress is not None and event % 500 == 0:
            progress(event)
    return ReplayResult(policy, stream.seed, capacity, arrived, allocated, frag_series, failed, request, failures,
                        time.perf_counter() - started)
