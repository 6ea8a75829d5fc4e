"""Score nodes, choose GPUs, and consume or return capacity: one computation for filter, score and bind.

`score_nodes` evaluates the pod on every candidate node (fit.evaluate), lets the policy score each
GPU option, and keeps, per node, the best option: the node's score IS that option's score, and
`choose_placement` (bind) and `place` (simulator) return that same option. The simulator and the
extender call these functions; nothing else decides where a pod goes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np

from tensorai.proto.contract import MILLI_PER_GPU
from tensorai.scheduler.core.context import PolicyContext
from tensorai.scheduler.core.fit import OK, Evaluation, evaluate
from tensorai.scheduler.core.initchain import held_per_gpu
from tensorai.scheduler.core.policies import DEFAULT_POLICY, POLICY_NAMES, onegpu
from tensorai.scheduler.core.policies.basic import score_bestfit, score_binpack, score_random, score_spread
from tensorai.scheduler.core.policies.fgd import score_fgd
from tensorai.scheduler.core.policies.tensorai import score_tensorai
from tensorai.scheduler.core.types import ClusterArrays, GPUChoice, Placement, PodDemand

POLICIES = POLICY_NAMES
Scorer = Callable[[ClusterArrays, Evaluation, PodDemand, PolicyContext], tuple[np.ndarray, np.ndarray | None]]
_SCORERS: dict[str, Scorer] = {
    "random": score_random,
    "bestfit": score_bestfit,
    "binpack": score_binpack,
    "spread": score_spread,
    "fgd": score_fgd,
    "tensorai": score_tensorai,
}
_UNCACHEABLE = frozenset({"random"})  # draws from the rng on every call


class PolicyError(ValueError):
    """An unknown policy name."""


def resolve_policy(demand: PodDemand, policy: str | None) -> str:
    """The pod's own `tensor.ai/policy` wins over the cluster default."""
    name = demand.policy or policy or DEFAULT_POLICY
    if name not in _SCORERS:
        raise PolicyError(f"unknown policy {name!r}; expected one of {', '.join(POLICIES)}")
    return name


def _best_options(primary: np.ndarray, tiebreak: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Per node: the best option's score and index (first index among equals)."""
    node_score = primary.max(axis=1) if primary.shape[1] else np.full(primary.shape[0], -np.inf)
    if tiebreak is None:
        option = np.argmax(primary, axis=1)
    else:
        option = np.argmax(np.where(primary == node_score[:, None], tiebreak, -np.inf), axis=1)
    return node_score, option


def _score(cluster: ClusterArrays, demand: PodDemand, policy: str, nodes: np.ndarray | None,
           context: PolicyContext) -> tuple[Evaluation, np.ndarray, np.ndarray]:
    evaluation = evaluate(cluster, demand, nodes)
    primary, tiebreak = _SCORERS[policy](cluster, evaluation, demand, context)
    node_score, option = _best_options(primary, tiebreak)
    node_score = np.where(evaluation.feasible, node_score, -np.inf)
    return evaluation, node_score, option


def _placement(cluster: ClusterArrays, demand: PodDemand, evaluation: Evaluation, row: int, option: int,
               score: float) -> Placement:
    node = int(evaluation.nodes[row])
    uuids = cluster.gpu_uuids[node]
    choices: list[GPUChoice] = []

    def add(name: str, slots: np.ndarray, memory: np.ndarray, milli: int) -> None:
        for slot, memory_mib in zip(slots.tolist(), memory.tolist(), strict=True):
            choices.append(GPUChoice(name, node, slot, uuids[slot], milli, int(memory_mib)))

    init = [c for c in demand.containers if c.init]
    for container, slots, memory in zip(init, evaluation.init_slots, evaluation.init_memory, strict=True):
        if evaluation.per_gpu:  # init containers go on the option's GPU, the one their app container reuses
            add(container.name, np.array([option]), memory[row, [option]], container.milli)
        else:
            add(container.name, slots[row], memory[row], container.milli)
    app = [c for c in demand.containers if not c.init]
    if evaluation.per_gpu:
        assert evaluation.slot_memory is not None
        add(app[0].name, np.array([option]), evaluation.slot_memory[row, [option]], app[0].milli)
    else:
        for container, slots, memory in zip(app, evaluation.container_slots, evaluation.container_memory,
                                            strict=True):
            add(container.name, slots[row], memory[row], container.milli)
    return Placement(node, cluster.node_names[node], tuple(choices), float(score))


class PlacementList(Sequence):
    """The Placement each node would get, built on first access (a full list costs ms at 5,000 nodes)."""

    def __init__(self, cluster: ClusterArrays, demand: PodDemand, evaluation: Evaluation,
                 node_score: np.ndarray, option: np.ndarray) -> None:
        self._cluster, self._demand, self._evaluation = cluster, demand, evaluation
        self._row_of = np.full(len(cluster.node_names), -1, dtype=np.int64)
        self._row_of[evaluation.nodes] = np.arange(len(evaluation.nodes))
        self._node_score, self._option = node_score, option
        self._built: dict[int, Placement | None] = {}

    def __len__(self) -> int:
        return len(self._row_of)

    def __getitem__(self, node: int) -> Placement | None:  # type: ignore[override]
        if isinstance(node, slice):
            return [self[i] for i in range(*node.indices(len(self)))]
        if node < 0:
            node += len(self)
        if not 0 <= node < len(self):
            raise IndexError(node)
        if node not in self._built:
            row = int(self._row_of[node])
            placement = None
            if row >= 0 and self._evaluation.feasible[row]:
                placement = _placement(self._cluster, self._demand, self._evaluation, row,
                                       int(self._option[row]), float(self._node_score[row]))
            self._built[node] = placement
        return self._built[node]

    def __iter__(self) -> Iterator[Placement | None]:
        return (self[i] for i in range(len(self)))


def score_nodes(cluster: ClusterArrays, demand: PodDemand, policy: str | None, candidates: np.ndarray | None = None,
                *, context: PolicyContext | None = None) -> tuple[np.ndarray, PlacementList]:
    """(scores (N,) float, -inf where infeasible or not a candidate; the Placement each node would get)."""
    context = context or PolicyContext()
    name = resolve_policy(demand, policy)
    evaluation, node_score, option = _score(cluster, demand, name, candidates, context)
    scores = np.full(len(cluster.node_names), -np.inf)
    scores[evaluation.nodes] = node_score
    return scores, PlacementList(cluster, demand, evaluation, node_score, option)


def choose_placement(cluster: ClusterArrays, demand: PodDemand, policy: str | None, node_index: int, *,
                     context: PolicyContext | None = None) -> Placement | None:
    """Bind: the best GPUs on the node kube-scheduler picked (None if the pod no longer fits there).

    When the context's ScoreCache already holds this pod shape's option for the node, computed on
    the node's current arrays (filter just scored it), that option is the answer: the same
    computation, not repeated (`ScoreCache.cached_placement`).
    """
    context = context or PolicyContext()
    name = resolve_policy(demand, policy)
    if context.use_cache and name not in _UNCACHEABLE and isinstance(context.cache, ScoreCache):
        hit, placement = context.cache.cached_placement(cluster, demand, name, node_index, context)
        if hit:
            return placement
    evaluation, node_score, option = _score(cluster, demand, name, np.array([node_index]), context)
    if not evaluation.feasible[0]:
        return None
    return _placement(cluster, demand, evaluation, 0, int(option[0]), float(node_score[0]))


class ScoreCache:
    """Per (policy, pod shape) node scores, recomputed only for nodes whose arrays changed.

    Every call compares the cluster arrays with a snapshot; a node that differs gets a new epoch and
    every cached row of it is stale. A caller that versions its arrays (`PolicyContext.cluster_version`)
    skips the compare while the version is unchanged, and one that also logs placements
    (`placement_rows_since`, the extender's view) has only the logged rows re-checked. Stale rows of
    one-GPU pods under fgd / tensorai are re-scored in one compiled call (`policies.onegpu`). Policies
    are node-local (a node's score depends only on that node and the target workload), which is what
    makes this exact; `test_cache_matches_fresh_scores` and tests/test_onegpu.py check it.
    """

    # what apply_placement / release_placement (and the view's forced apply) write
    _PLACEMENT_FIELDS = ("gpu_free_milli", "gpu_free_memory_mib", "gpu_exclusive", "node_cpu_free_milli",
                         "node_memory_free_mib")
    _FIELDS = ("gpu_free_milli", "gpu_free_memory_mib", "gpu_healthy", "gpu_exclusive", "node_cpu_free_milli",
               "node_memory_free_mib", "node_schedulable", "node_model", "gpu_count", "gpu_usable_memory_mib",
               "gpu_numa")

    def __init__(self) -> None:
        self._layout: tuple | None = None
        self._workload: object | None = None
        self._snapshot: dict[str, np.ndarray] = {}
        self._epoch = np.zeros(0, dtype=np.int64)
        self._entries: dict[tuple, tuple[np.ndarray, ...]] = {}
        self.last: tuple[Evaluation, np.ndarray, np.ndarray] | None = None
        # (N,) fit reason codes (fit.OK where feasible) from the same evaluations as the last scores,
        # so filter can say why a node was rejected without evaluating the rejected nodes again
        self.reasons: np.ndarray | None = None
        self._changed_fields: list[str] = []  # the fields in which the last _changed found differences
        self._synced: tuple[object, ClusterArrays] | None = None  # (cluster_version token, cluster) of the last sync

    def _sync(self, cluster: ClusterArrays, workload: object, context: PolicyContext) -> None:
        # Scores depend only on a node's arrays and the workload, so any cluster with the same layout
        # can reuse rows whose arrays are unchanged; a different layout starts afresh.
        shape = cluster.gpu_free_milli.shape
        layout = (shape, tuple(cluster.models))
        token = context.cluster_version() if context.cluster_version is not None else None
        if self._layout != layout:
            self._layout = layout
            self._snapshot = {name: getattr(cluster, name).copy() for name in self._FIELDS}
            self._epoch = np.zeros(shape[0], dtype=np.int64)
            self._entries.clear()
        elif token is not None and self._synced is not None and self._synced[1] is cluster and self._synced[0] == token:
            pass  # the caller vouches the arrays are unchanged since the last sync
        elif (rows := self._placement_rows(cluster, token, context)) is not None:
            if rows:  # the caller vouches only pod placements changed, on these rows
                changed = np.unique(np.asarray(rows, dtype=np.int64))
                self._epoch[changed] += 1
                for name in self._PLACEMENT_FIELDS:
                    self._snapshot[name][changed] = getattr(cluster, name)[changed]
        elif (changed := self._changed(cluster)).size:
            self._epoch[changed] += 1
            for name in self._changed_fields:  # the other fields' snapshot rows are equal already
                self._snapshot[name][changed] = getattr(cluster, name)[changed]
        self._synced = (token, cluster) if token is not None else None
        if self._workload is not workload:  # holding a reference keeps its id from being reused
            self._workload = workload
            self._entries.clear()

    def _placement_rows(self, cluster: ClusterArrays, token: object, context: PolicyContext) -> list[int] | None:
        """The rows the caller says only pod placements changed since the last sync, or None (compare all)."""
        if token is None or context.placement_rows_since is None or self._synced is None:
            return None
        if self._synced[1] is not cluster:
            return None
        return context.placement_rows_since(self._synced[0])

    def _changed(self, cluster: ClusterArrays) -> np.ndarray:
        # Flat compares plus flatnonzero are several times faster than row-wise any() on (N, G) arrays,
        # and usually only one node changed since the last call.
        changed: list[np.ndarray] = []
        self._changed_fields = []
        for name in self._FIELDS:
            now, then = getattr(cluster, name), self._snapshot[name]
            # (not tobytes() ==: cheaper at 1,000 nodes, but 20x dearer at 5,000 - large copies)
            differs = np.not_equal(now.reshape(-1), then.reshape(-1))
            if differs.any():
                self._changed_fields.append(name)
                flat = np.flatnonzero(differs)
                changed.append(flat // now.shape[1] if now.ndim == 2 else flat)
        if not changed:
            return np.zeros(0, dtype=np.int64)
        return np.unique(np.concatenate(changed))

    def node_scores(self, cluster: ClusterArrays, demand: PodDemand, policy: str,
                    context: PolicyContext) -> np.ndarray:
        """(N,) scores identical to score_nodes' for this pod, from cache where still valid.

        Pods with UUID rules or an anti-affinity group are scored afresh: GPU UUIDs and groups are not
        part of the snapshot.
        """
        if demand.has_gpu_rules:
            evaluation, node_score, option = _score(cluster, demand, policy, None, context)
            self.last = (evaluation, node_score, option)
            self.reasons = evaluation.reason
            return node_score
        self._sync(cluster, context.target(), context)
        entry = self._entries.get(self._key(demand, policy))
        if entry is None:
            count = len(cluster.node_names)
            # scores, best option, epoch computed at, fit reason, and for one-GPU pods that option's GPU and MiB
            entry = (np.full(count, -np.inf), np.full(count, -1, dtype=np.int64), np.full(count, -1, dtype=np.int64),
                     np.zeros(count, dtype=np.int8), np.full(count, -1, dtype=np.int64),
                     np.zeros(count, dtype=np.int64))
            self._entries[self._key(demand, policy)] = entry
        scores, options, computed, reasons, gpu_slot, gpu_memory = entry
        stale = np.flatnonzero(computed != self._epoch)
        self.last = None
        if stale.size and onegpu.covers(demand, policy):  # the common pod: one compiled call, same numbers
            reasons[stale], scores[stale], options[stale], gpu_slot[stale], gpu_memory[stale] = onegpu.score_one_gpu(
                cluster, demand, policy, stale, context)
            computed[stale] = self._epoch[stale]
        elif stale.size:
            evaluation, node_score, option = _score(cluster, demand, policy, stale, context)
            scores[stale] = node_score
            options[stale] = option
            reasons[stale] = evaluation.reason
            if demand.one_gpu:  # what _placement would read for the node's best option: bind needs no rescoring
                rows = np.arange(len(stale))
                if evaluation.per_gpu:
                    assert evaluation.slot_memory is not None
                    gpu_slot[stale], gpu_memory[stale] = option, evaluation.slot_memory[rows, option]
                else:
                    gpu_slot[stale] = evaluation.container_slots[0][:, 0]
                    gpu_memory[stale] = evaluation.container_memory[0][:, 0]
            computed[stale] = self._epoch[stale]
            self.last = (evaluation, node_score, option)
        self.reasons = reasons
        return scores

    @staticmethod
    def _key(demand: PodDemand, policy: str) -> tuple:
        """The pod's shape: everything but its identity."""
        return (policy, demand.containers, demand.cpu_milli, demand.memory_mib, demand.allowed_models,
                demand.excluded_models, demand.exclusive)

    def cached_placement(self, cluster: ClusterArrays, demand: PodDemand, policy: str, node: int,
                         context: PolicyContext) -> tuple[bool, Placement | None]:
        """(True, what choose_placement returns) from the cache, or (False, None) when it cannot say.

        Only for the common shapes - one container on one GPU (a share or a whole GPU), no init
        containers, no UUID or group rules - whose placement is the GPU slot and memory that
        node_scores kept from the evaluation of the node's best option, and only when the node's
        cached row was computed on its current arrays and the current workload.
        """
        if not demand.one_gpu or demand.has_gpu_rules or self._entries.get(self._key(demand, policy)) is None:
            return False, None
        self._sync(cluster, context.target(), context)
        entry = self._entries.get(self._key(demand, policy))  # a new workload clears the entries
        if entry is None or not 0 <= node < len(self._epoch) or entry[2][node] != self._epoch[node]:
            return False, None
        scores, _, _, reasons, gpu_slot, gpu_memory = entry
        if reasons[node] != OK:
            return True, None
        container, slot = demand.containers[0], int(gpu_slot[node])
        choice = GPUChoice(container.name, node, slot, cluster.gpu_uuids[node][slot], container.milli,
                           int(gpu_memory[node]))
        return True, Placement(node, cluster.node_names[node], (choice,), float(scores[node]))

    def placement_if_fresh(self, cluster: ClusterArrays, demand: PodDemand, node: int) -> Placement | None:
        """The Placement of `node` from the evaluation node_scores just ran, if it covered that node."""
        if self.last is None:
            return None
        evaluation, node_score, option = self.last
        rows = np.flatnonzero(evaluation.nodes == node)
        if not rows.size or not evaluation.feasible[rows[0]]:
            return None
        row = int(rows[0])
        return _placement(cluster, demand, evaluation, row, int(option[row]), float(node_score[row]))


def place(cluster: ClusterArrays, demand: PodDemand, policy: str | None, *, node_order: np.ndarray | None = None,
          candidates: np.ndarray | None = None, context: PolicyContext | None = None) -> Placement | None:
    """Simulator: the best node (ties -> earliest in node_order, default index order) and its GPUs."""
    context = context or PolicyContext()
    name = resolve_policy(demand, policy)
    cacheable = context.use_cache and name not in _UNCACHEABLE and demand.anti_affinity_group is None
    if cacheable:
        if not isinstance(context.cache, ScoreCache):
            context.cache = ScoreCache()
        scores = context.cache.node_scores(cluster, demand, name, context)
        if candidates is not None:
            mask = np.zeros(len(scores), dtype=bool)
            mask[candidates] = True
            scores = np.where(mask, scores, -np.inf)
    else:
        scores, placements = score_nodes(cluster, demand, name, candidates, context=context)
    ordered = scores if node_order is None else scores[node_order]
    best = int(np.argmax(ordered)) if len(ordered) else 0
    if not len(ordered) or ordered[best] == -np.inf:
        return None
    node = best if node_order is None else int(node_order[best])
    if not cacheable:  # re-scoring would draw new random numbers: take the placement of this very scoring
        return placements[node]
    fresh = context.cache.placement_if_fresh(cluster, demand, node)  # same evaluation that scored the node
    if fresh is not None:
        return fresh
    return choose_placement(cluster, demand, name, node, context=context)


def to_extender_scores(scores: np.ndarray) -> np.ndarray:
    """0..10 integers for kube-scheduler's prioritize: linear min-max over the feasible nodes.

    The best feasible node gets 10, the worst 0 (all 10 when they tie); infeasible nodes get 0.
    Rounding down keeps the order (never swaps two nodes), though close scores may share a value.
    """
    scores = np.asarray(scores, dtype=np.float64)
    out = np.zeros(scores.shape, dtype=np.int64)
    finite = np.isfinite(scores)
    if not finite.any():
        return out
    low, high = scores[finite].min(), scores[finite].max()
    if high == low:
        out[finite] = 10
    else:
        out[finite] = np.floor((scores[finite] - low) * 10.0 / (high - low)).astype(np.int64)
    return out


def apply_placement(cluster: ClusterArrays, demand: PodDemand, placement: Placement) -> None:
    """Consume the pod's CPU, memory and what it holds on each GPU; ValueError (nothing changed) if it does not fit.

    Per GPU that is what kubelet's reuse of init containers' devices leaves held while the pod runs
    (`initchain.held_per_gpu`): max(init, app) for an init container and the app container after it.
    """
    node = placement.node_index
    if cluster.node_cpu_free_milli[node] < demand.cpu_milli or cluster.node_memory_free_mib[node] < demand.memory_mib:
        raise ValueError(f"pod {demand.namespace}/{demand.name} no longer fits node {placement.node_name}: cpu/memory")
    if any(choice.node_index != node for choice in placement.choices):
        raise ValueError(f"placement of {demand.name} names GPUs on two nodes")
    need = held_per_gpu(demand, placement)
    for slot, (milli, memory_mib) in need.items():
        if (cluster.gpu_free_milli[node, slot] < milli or cluster.gpu_free_memory_mib[node, slot] < memory_mib
                or not cluster.gpu_healthy[node, slot] or cluster.gpu_exclusive[node, slot]):
            raise ValueError(f"pod {demand.namespace}/{demand.name} no longer fits GPU {slot} of {placement.node_name}")
        if demand.exclusive and cluster.gpu_free_milli[node, slot] != MILLI_PER_GPU:
            raise ValueError(f"exclusive pod {demand.name} needs untouched GPU {slot} of {placement.node_name}")
    cluster.node_cpu_free_milli[node] -= demand.cpu_milli
    cluster.node_memory_free_mib[node] -= demand.memory_mib
    for slot, (milli, memory_mib) in need.items():
        cluster.gpu_free_milli[node, slot] -= milli
        cluster.gpu_free_memory_mib[node, slot] -= memory_mib
        if demand.exclusive:
            cluster.gpu_exclusive[node, slot] = True
        if demand.anti_affinity_group is not None:
            groups = cluster.gpu_groups.get((node, slot), frozenset())
            cluster.gpu_groups[(node, slot)] = groups | {demand.anti_affinity_group}


def release_placement(cluster: ClusterArrays, demand: PodDemand, placement: Placement, node: int | None = None) -> None:
    """Give back what apply_placement took (failed bind, pod deleted).

    `node`: the row to give it back on, when `cluster` is a copy of some rows (`cluster.cluster_rows`)
    and the placement names the node's row in the full cluster; default `placement.node_index`.
    """
    node = placement.node_index if node is None else node
    cluster.node_cpu_free_milli[node] += demand.cpu_milli
    cluster.node_memory_free_mib[node] += demand.memory_mib
    for slot, (milli, memory_mib) in held_per_gpu(demand, placement).items():
        cluster.gpu_free_milli[node, slot] += milli
        cluster.gpu_free_memory_mib[node, slot] += memory_mib
        if demand.exclusive:
            cluster.gpu_exclusive[node, slot] = False
        if demand.anti_affinity_group is not None:
            groups = cluster.gpu_groups.get((node, slot), frozenset()) - {demand.anti_affinity_group}
            if groups:
                cluster.gpu_groups[(node, slot)] = groups
            else:
                cluster.gpu_groups.pop((node, slot), None)
