"""Which nodes can run a pod, and which GPU options each of them offers.

Rules (docs/scheduling.md has the user-facing version):
- a fractional container (milli < 1000) needs its milli AND its memory on ONE healthy GPU;
- a whole-GPU container needs `gpu_count` fully free healthy GPUs on the node;
- several GPU containers of a pod must fit together (capacity is subtracted container by container);
- init containers run alone before the app containers and release their GPUs, so each must fit on
  its own on the node's current free capacity;
- memory defaults to floor(milli/1000 x usable memory) of the chosen GPU (floor, so that shares that
  fit by milli always fit by memory), unless the pod gives `tensor.ai/vgpu-memory`;
- GPU model and UUID include/exclude lists, `exclusive` (only untouched GPUs; nothing may share them
  later) and anti-affinity groups (no GPU already holding the group) filter GPUs;
- an unschedulable node (stale inventory, cordoned) is infeasible and preemption cannot fix it;
- multi-GPU containers prefer GPUs on one NUMA node (a preference, never a requirement).

`evaluate` is the one computation behind filter, score and bind: for every candidate node it
returns the options (which GPUs each app container would take), so the node's score and the GPU
chosen at bind cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tensorai.proto.contract import MILLI_PER_GPU
from tensorai.scheduler.core.types import ClusterArrays, ContainerDemand, PodDemand

# Reason codes: why a node cannot run the pod. The resolvable ones could be fixed by evicting pods.
OK = 0
UNSCHEDULABLE = 1
MODEL = 2
NO_GPUS = 3
UUID = 4
CPU = 5
MEMORY = 6
GPU = 7
INIT_GPU = 8
REASON_TEXT = {
    UNSCHEDULABLE: "node is not schedulable (stale GPU inventory, cordoned or not ready)",
    MODEL: "GPU model not allowed by the pod's tensor.ai/gpu-model / gpu-model-exclude",
    NO_GPUS: "node has no GPU the pod may use",
    UUID: "no GPU allowed by the pod's tensor.ai/gpu-uuid / gpu-uuid-exclude or anti-affinity group",
    CPU: "insufficient cpu",
    MEMORY: "insufficient memory",
    GPU: "not enough free GPU capacity (milli-GPU or GPU memory) on any GPU set",
    INIT_GPU: "an init container's GPU request does not fit",
}
RESOLVABLE = frozenset({CPU, MEMORY, GPU, INIT_GPU})


@dataclass(slots=True)
class Evaluation:
    """Per candidate node (rows follow `nodes`): feasibility and the GPU options on offer.

    Two layouts of options:
    - `per_gpu` (one fractional app container, the common case): option o is "the container on GPU
      slot o"; `option_milli[:, o, o]` is its milli.
    - otherwise one option per node, built greedily container by container.
    `option_milli[n, o, g]` is the milli that option takes from GPU slot g (app containers only).
    """

    nodes: np.ndarray  # (n,) int64 node indexes
    feasible: np.ndarray  # (n,) bool
    reason: np.ndarray  # (n,) int8 reason code (OK for feasible)
    per_gpu: bool
    option_valid: np.ndarray  # (n, O) bool
    option_milli: np.ndarray  # (n, O, G) int32
    # per app container: GPU slots (n, k) and memory MiB (n, k) - only for the greedy layout
    container_slots: list[np.ndarray]
    container_memory: list[np.ndarray]
    # per_gpu layout: memory the one container would take on each slot (n, G)
    slot_memory: np.ndarray | None
    # init containers: slots (n, k) and memory (n, k) each
    init_slots: list[np.ndarray]
    init_memory: list[np.ndarray]


def _model_ids(cluster: ClusterArrays, names: frozenset[str]) -> np.ndarray:
    return np.array([index for index, model in enumerate(cluster.models) if model in names], dtype=np.int32)


def _gpu_filter(cluster: ClusterArrays, demand: PodDemand, nodes: np.ndarray) -> np.ndarray:
    """(n, G) GPUs this pod may use at all, before capacity: healthy, not exclusive, uuid/group rules."""
    allowed = cluster.gpu_healthy[nodes] & (cluster.gpu_free_milli[nodes] >= 0)
    allowed &= ~cluster.gpu_exclusive[nodes]
    if demand.exclusive:  # only untouched GPUs
        allowed &= (cluster.gpu_free_milli[nodes] == MILLI_PER_GPU) & (
            cluster.gpu_free_memory_mib[nodes] == cluster.gpu_usable_memory_mib[nodes]
        )
    if demand.allowed_uuids is not None or demand.excluded_uuids:
        for row, node in enumerate(nodes.tolist()):
            for slot, uuid in enumerate(cluster.gpu_uuids[node]):
                if (demand.allowed_uuids is not None and uuid not in demand.allowed_uuids) or (
                    uuid in demand.excluded_uuids
                ):
                    allowed[row, slot] = False
    if demand.anti_affinity_group is not None and cluster.gpu_groups:
        row_of = {int(node): row for row, node in enumerate(nodes.tolist())}
        for (node, slot), groups in cluster.gpu_groups.items():
            row = row_of.get(node)
            if row is not None and demand.anti_affinity_group in groups:
                allowed[row, slot] = False
    return allowed


def _container_memory(container: ContainerDemand, usable_mib: np.ndarray) -> np.ndarray:
    """Memory MiB the container needs on each GPU: explicit, or its share of usable memory (floor)."""
    if container.memory_mib is not None:
        return np.full(usable_mib.shape, container.memory_mib, dtype=np.int64)
    if container.milli >= MILLI_PER_GPU:
        return usable_mib.astype(np.int64)
    return (usable_mib.astype(np.int64) * container.milli) // MILLI_PER_GPU


def _fits(container: ContainerDemand, free_milli: np.ndarray, free_mib: np.ndarray, usable_mib: np.ndarray,
          allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, G) GPUs that can take one unit of the container, and the memory it would take on each."""
    need_mib = _container_memory(container, usable_mib)
    if container.milli >= MILLI_PER_GPU:
        fit = allowed & (free_milli >= MILLI_PER_GPU) & (free_mib >= usable_mib) & (free_mib >= need_mib)
    else:
        fit = allowed & (free_milli >= container.milli) & (free_mib >= need_mib)
    return fit, need_mib


def _pick_whole(fit: np.ndarray, count: int, numa: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, count) slots of `count` fitting GPUs per node, preferring one NUMA node; and an ok mask."""
    ok = fit.sum(axis=1) >= count
    order = np.argsort(~fit, axis=1, kind="stable")[:, :count]  # first `count` fitting slots by index
    if count > 1 and (numa >= 0).any():
        for row in np.flatnonzero(ok):
            best: np.ndarray | None = None
            for domain in np.unique(numa[row][fit[row]]):
                slots = np.flatnonzero(fit[row] & (numa[row] == domain))
                # smallest NUMA domain that holds the set keeps bigger domains whole for bigger pods
                if len(slots) >= count and (best is None or len(slots) < len(best)):
                    best = slots
            if best is not None:
                order[row] = best[:count]
    return order, ok


def _pick_fraction(fit: np.ndarray, free_milli: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, 1) the tightest fitting GPU per node (first index on ties) and an ok mask."""
    masked = np.where(fit, free_milli, np.iinfo(np.int32).max)
    slot = np.argmin(masked, axis=1)
    return slot[:, None], fit.any(axis=1)


def evaluate(cluster: ClusterArrays, demand: PodDemand, nodes: np.ndarray | None = None) -> Evaluation:
    """Feasibility and GPU options of `demand` on `nodes` (default: every node)."""
    if nodes is None:
        nodes = np.arange(len(cluster.node_names), dtype=np.int64)
    nodes = np.asarray(nodes, dtype=np.int64)
    count, width = len(nodes), cluster.gpu_free_milli.shape[1]
    reason = np.zeros(count, dtype=np.int8)

    # Node-level rules, in the order a user would want to read them (unresolvable first).
    reason[~cluster.node_schedulable[nodes]] = UNSCHEDULABLE
    app = [c for c in demand.containers if not c.init]
    init = [c for c in demand.containers if c.init]
    needs_gpu = bool(demand.containers)
    node_model = cluster.node_model[nodes]
    if needs_gpu:
        model_ok = node_model >= 0
        if demand.allowed_models is not None:
            model_ok &= np.isin(node_model, _model_ids(cluster, demand.allowed_models))
        if demand.excluded_models:
            model_ok &= ~np.isin(node_model, _model_ids(cluster, demand.excluded_models))
        reason[(reason == OK) & (cluster.gpu_count[nodes] == 0)] = NO_GPUS
        reason[(reason == OK) & ~model_ok] = MODEL
    reason[(reason == OK) & (cluster.node_cpu_free_milli[nodes] < demand.cpu_milli)] = CPU
    reason[(reason == OK) & (cluster.node_memory_free_mib[nodes] < demand.memory_mib)] = MEMORY

    per_gpu = len(app) == 1 and app[0].gpu_count == 1 and app[0].milli < MILLI_PER_GPU
    options = width if per_gpu else 1
    option_valid = np.zeros((count, options), dtype=bool)
    option_milli = np.zeros((count, options, width), dtype=np.int32)
    container_slots: list[np.ndarray] = []
    container_memory: list[np.ndarray] = []
    init_slots: list[np.ndarray] = []
    init_memory: list[np.ndarray] = []
    slot_memory = None
    if not needs_gpu:
        option_valid[:, 0] = reason == OK
        return Evaluation(nodes, reason == OK, reason, False, option_valid, option_milli, [], [], None, [], [])

    allowed = _gpu_filter(cluster, demand, nodes)
    reason[(reason == OK) & ~allowed.any(axis=1)] = UUID
    free_milli = cluster.gpu_free_milli[nodes].astype(np.int64)
    free_mib = cluster.gpu_free_memory_mib[nodes].astype(np.int64)
    usable_mib = cluster.gpu_usable_memory_mib[nodes]
    numa = cluster.gpu_numa[nodes]

    init_ok = np.ones(count, dtype=bool)
    for container in init:  # each alone on today's free capacity; released before the app starts
        fit, need = _fits(container, free_milli, free_mib, usable_mib, allowed)
        if container.milli >= MILLI_PER_GPU:
            slots, ok = _pick_whole(fit, container.gpu_count, numa)
        else:
            slots, ok = _pick_fraction(fit, free_milli)
        init_ok &= ok
        init_slots.append(slots)
        init_memory.append(np.take_along_axis(need, slots, axis=1))

    if per_gpu:
        fit, need = _fits(app[0], free_milli, free_mib, usable_mib, allowed)
        option_valid[:] = fit
        diagonal = np.arange(width)
        option_milli[:, diagonal, diagonal] = np.where(fit, app[0].milli, 0)
        slot_memory = need
        gpu_ok = fit.any(axis=1)
    else:
        # Greedy, biggest first: whole-GPU containers, then shares, tightest GPU for each share.
        order = sorted(range(len(app)), key=lambda i: (-(app[i].milli >= MILLI_PER_GPU), -app[i].gpu_count,
                                                       -app[i].milli))
        temp_milli, temp_mib = free_milli.copy(), free_mib.copy()
        gpu_ok = np.ones(count, dtype=bool)
        picked: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        rows = np.arange(count)[:, None]
        for index in order:
            container = app[index]
            fit, need = _fits(container, temp_milli, temp_mib, usable_mib, allowed)
            if container.milli >= MILLI_PER_GPU:
                slots, ok = _pick_whole(fit, container.gpu_count, numa)
            else:
                slots, ok = _pick_fraction(fit, temp_milli)
            gpu_ok &= ok
            memory = np.take_along_axis(need, slots, axis=1)
            taken = np.where(ok[:, None], container.milli, 0)
            np.subtract.at(temp_milli, (rows, slots), taken)
            np.subtract.at(temp_mib, (rows, slots), np.where(ok[:, None], memory, 0))
            np.add.at(option_milli[:, 0, :], (rows, slots), taken.astype(np.int32))
            picked[index] = (slots, memory)
        for index in range(len(app)):
            container_slots.append(picked[index][0])
            container_memory.append(picked[index][1])
        option_valid[:, 0] = gpu_ok
    reason[(reason == OK) & ~init_ok] = INIT_GPU
    reason[(reason == OK) & ~gpu_ok] = GPU
    feasible = reason == OK
    option_valid &= feasible[:, None]
    return Evaluation(nodes, feasible, reason, per_gpu, option_valid, option_milli, container_slots,
                      container_memory, slot_memory, init_slots, init_memory)


def node_feasibility(
    cluster: ClusterArrays, demand: PodDemand, candidates: np.ndarray | None = None
) -> tuple[np.ndarray, dict[int, tuple[str, bool]]]:
    """(feasible mask over all N nodes, {node index: (reason, resolvable by preemption)}) for candidates.

    Nodes outside `candidates` are False in the mask and absent from the reasons.
    """
    evaluation = evaluate(cluster, demand, candidates)
    mask = np.zeros(len(cluster.node_names), dtype=bool)
    mask[evaluation.nodes[evaluation.feasible]] = True
    reasons: dict[int, tuple[str, bool]] = {}
    for node, code in zip(evaluation.nodes[~evaluation.feasible].tolist(),
                          evaluation.reason[~evaluation.feasible].tolist(), strict=True):
        reasons[node] = (REASON_TEXT[code], code in RESOLVABLE)
    return mask, reasons
