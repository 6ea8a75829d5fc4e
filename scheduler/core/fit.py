"""Which nodes can run a pod, and which GPU options each of them offers.

Rules (docs/scheduling.md has the user-facing version):
- a fractional container (milli < 1000) needs its milli AND its memory on ONE healthy GPU;
- a whole-GPU container needs `gpu_count` fully free healthy GPUs on the node;
- several GPU containers of a pod must fit together (capacity is subtracted container by container);
- init containers run alone before the app containers and release their GPUs, so each must fit on
  its own on the node's current free capacity;
- memory defaults to floor(milli/1000 x usable memory) of the chosen GPU (floor, so that shares that
  fit by milli always fit by memory), unless the pod gives `tensor.ai/vgpu-memory`;
- GPU model include/exclude lists (names as users write them, matched word by word against the
  reported names: proto/gpumodels.py), UUID include/exclude lists, `exclusive` (only untouched GPUs;
  nothing may share them later) and anti-affinity groups (no GPU already holding the group) filter GPUs;
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
from tensorai.proto.gpumodels import matches_any
from tensorai.scheduler.core.initchain import anchors, held_arrays, held_sequence
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
    """Ids of the cluster's reported models that one of the user's names matches (proto/gpumodels.py)."""
    return np.array([index for index, model in enumerate(cluster.models) if matches_any(names, model)],
                    dtype=np.int32)


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


def _held(containers: list[ContainerDemand], slots_of: dict[int, np.ndarray], memory_of: dict[int, np.ndarray],
          count: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, G) milli and memory the pod holds on each GPU after kubelet's reuse of init containers' IDs."""
    rows = np.arange(count)[:, None]
    milli_amounts: list[tuple[bool, np.ndarray]] = []
    mib_amounts: list[tuple[bool, np.ndarray]] = []
    for index, container in enumerate(containers):
        milli = np.zeros((count, width), dtype=np.int64)
        mib = np.zeros((count, width), dtype=np.int64)
        np.add.at(milli, (rows, slots_of[index]), min(container.milli, MILLI_PER_GPU))
        np.add.at(mib, (rows, slots_of[index]), memory_of[index])
        milli_amounts.append((container.init, milli))
        mib_amounts.append((container.init, mib))
    return held_arrays(milli_amounts), held_arrays(mib_amounts)


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

    container_slots: list[np.ndarray] = []
    container_memory: list[np.ndarray] = []
    init_slots: list[np.ndarray] = []
    init_memory: list[np.ndarray] = []
    slot_memory = None
    if not needs_gpu:
        option_valid = (reason == OK)[:, None]
        option_milli = np.zeros((count, 1, width), dtype=np.int32)
        return Evaluation(nodes, reason == OK, reason, False, option_valid, option_milli, [], [], None, [], [])

    allowed = _gpu_filter(cluster, demand, nodes)
    reason[(reason == OK) & ~allowed.any(axis=1)] = UUID
    free_milli = cluster.gpu_free_milli[nodes].astype(np.int64)
    free_mib = cluster.gpu_free_memory_mib[nodes].astype(np.int64)
    usable_mib = cluster.gpu_usable_memory_mib[nodes]
    numa = cluster.gpu_numa[nodes]

    containers = list(demand.containers)
    anchor_of = anchors(containers)
    chained: dict[int, list[int]] = {index: [] for index, anchor in enumerate(anchor_of) if anchor is None}
    for index, anchor in enumerate(anchor_of):
        if anchor is not None:
            chained[anchor].append(index)
    init_index = [index for index, container in enumerate(containers) if container.init]
    rows = np.arange(count)[:, None]
    init_ok = np.ones(count, dtype=bool)
    own = list(chained)
    lone = containers[own[0]] if len(own) == 1 else None
    per_gpu = (lone is not None and not lone.init and lone.gpu_count == 1 and lone.milli < MILLI_PER_GPU
               and len(app) == 1 and all(containers[i].gpu_count == 1 for i in chained[own[0]]))
    options = width if per_gpu else 1
    option_valid = np.zeros((count, options), dtype=bool)
    option_milli = np.zeros((count, options, width), dtype=np.int32)

    if per_gpu:
        # Option o: the one app container on GPU slot o, its init containers (all one-GPU) on the same slot.
        main = app[0]
        app_fit, need = _fits(main, free_milli, free_mib, usable_mib, allowed)
        fit, held_milli = app_fit, main.milli
        need_of = {i: _container_memory(containers[i], usable_mib) for i in chained[own[0]]}
        if need_of:  # the hot path (no init containers) skips this
            need_of[own[0]] = need
            sequence = sorted(need_of)
            held_milli = held_sequence([(containers[i].init, min(containers[i].milli, MILLI_PER_GPU))
                                        for i in sequence])
            held_mib = held_arrays([(containers[i].init, need_of[i]) for i in sequence])
            fit = app_fit & (free_milli >= held_milli) & (free_mib >= held_mib)
        option_valid[:] = fit
        diagonal = np.arange(width)
        option_milli[:, diagonal, diagonal] = np.where(fit, held_milli, 0)
        slot_memory = need
        for index in init_index:  # placement takes the option's slot; memory per slot
            init_slots.append(np.zeros((count, 0), dtype=np.int64))
            init_memory.append(need_of[index])
        gpu_ok = app_fit.any(axis=1)
        # the init chain is to blame only where the app container alone would fit (else: GPU)
        init_ok = fit.any(axis=1) | ~gpu_ok
    else:
        # Greedy, biggest first: whole-GPU containers, then shares, tightest GPU for each share. A share
        # reserves what its group (init containers and later containers sharing its GPU) holds there.
        order = sorted(own, key=lambda i: (-(containers[i].milli >= MILLI_PER_GPU), -containers[i].gpu_count,
                                           -containers[i].milli, i))
        temp_milli, temp_mib = free_milli.copy(), free_mib.copy()
        gpu_ok = np.ones(count, dtype=bool)
        slots_of: dict[int, np.ndarray] = {}
        memory_of: dict[int, np.ndarray] = {}
        for index in order:
            container = containers[index]
            if chained[index] and container.milli < MILLI_PER_GPU:
                group = [containers[i] for i in sorted([index, *chained[index]])]  # spec order
                need = _container_memory(container, usable_mib)
                reserve_milli = held_sequence([(member.init, min(member.milli, MILLI_PER_GPU)) for member in group])
                reserve_mib = held_arrays([(member.init, _container_memory(member, usable_mib)) for member in group])
                fit = allowed & (temp_milli >= reserve_milli) & (temp_mib >= reserve_mib)
                if reserve_milli >= MILLI_PER_GPU:
                    fit &= temp_mib >= usable_mib
                slots, ok = _pick_fraction(fit, temp_milli)
                taken_mib = np.take_along_axis(reserve_mib, slots, axis=1)
            else:  # whole GPUs hold any share of their group; a lone share reserves itself
                fit, need = _fits(container, temp_milli, temp_mib, usable_mib, allowed)
                if container.milli >= MILLI_PER_GPU:
                    slots, ok = _pick_whole(fit, container.gpu_count, numa)
                else:
                    slots, ok = _pick_fraction(fit, temp_milli)
                reserve_milli, taken_mib = container.milli, None
            if container.init:
                init_ok &= ok
            else:
                gpu_ok &= ok
            slots_of[index] = slots
            memory_of[index] = np.take_along_axis(need, slots, axis=1)
            taken = np.where(ok[:, None], reserve_milli, 0)
            np.subtract.at(temp_milli, (rows, slots), taken)
            np.subtract.at(temp_mib, (rows, slots),
                           np.where(ok[:, None], memory_of[index] if taken_mib is None else taken_mib, 0))
            np.add.at(option_milli[:, 0, :], (rows, slots), taken.astype(np.int32))
        for index, anchor in enumerate(anchor_of):  # group members: the GPUs of their group's leader
            if anchor is None:
                continue
            container, base = containers[index], slots_of[anchor]
            if container.gpu_count <= base.shape[1]:
                slots = base[:, :container.gpu_count]
            else:  # more GPUs than the leader: the rest on whole free GPUs (kubelet keeps them held)
                spare = allowed & (temp_milli >= MILLI_PER_GPU) & (temp_mib >= usable_mib)
                spare[rows, base] = False
                extra, ok = _pick_whole(spare, container.gpu_count - base.shape[1], numa)
                init_ok &= ok
                slots = np.concatenate([base, extra], axis=1)
            slots_of[index] = slots
            memory_of[index] = np.take_along_axis(_container_memory(container, usable_mib), slots, axis=1)
        if any(len(members) for members in chained.values()):  # shared GPUs: count exactly what stays held
            held_milli, held_mib = _held(containers, slots_of, memory_of, count, width)
            exact = ((held_milli == 0) | (held_milli <= free_milli)) & ((held_mib == 0) | (held_mib <= free_mib))
            init_ok &= exact.all(axis=1) | ~gpu_ok  # the app containers fit by themselves: the hand-on fails
            option_milli[:, 0, :] = np.where((gpu_ok & init_ok)[:, None], held_milli, 0).astype(np.int32)
        for index, container in enumerate(containers):
            if container.init:
                init_slots.append(slots_of[index])
                init_memory.append(memory_of[index])
            else:
                container_slots.append(slots_of[index])
                container_memory.append(memory_of[index])
        option_valid[:, 0] = gpu_ok & init_ok
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
