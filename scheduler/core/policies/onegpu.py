"""The common pod - one container on one GPU - fitted and scored by `fgd` or `tensorai` in one compiled call.

Most pods ask for one GPU share or one whole GPU. Between two pods the extender's score cache
re-scores only the few nodes a bind changed, and for those few rows the general path
(`fit.evaluate`, then the policy, then `placement._best_options`) is ~50 small numpy calls: ~0.1 ms
of call overhead per pod, the largest single cost left in filter. `score_one_gpu` computes the
same reason codes, best option, node score and the GPU slot and memory bind would take, row by row
in one `@njit` function.

It is a second implementation of the same rules, so it must agree exactly: every rule below
names the line of `fit.evaluate` / `policies.tensorai` it mirrors, the float arithmetic is the
same operations in the same order (FGD's quantiser is shared: `fgd.quantise` calls `_quantise`),
and tests/test_onegpu.py compares it with the general path on random clusters, pods and workloads.
Pods it does not cover (several containers, init containers, multi-GPU, UUID or anti-affinity
rules, other policies) get None and take the general path.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from tensorai.proto.contract import MILLI_PER_GPU
from tensorai.proto.gpumodels import matches_any
from tensorai.scheduler.core.context import PolicyContext
from tensorai.scheduler.core.fit import CPU, GPU, MEMORY, MODEL, NO_GPUS, OK, UNSCHEDULABLE, UUID
from tensorai.scheduler.core.policies.fgd import DEFAULT_WORKLOAD, quantise_one
from tensorai.scheduler.core.policies.fragmentation import _frag_row
from tensorai.scheduler.core.policies.tensorai import (
    _BIG_NODE_PENALTY,
    _FIT_WEIGHT,
    _SHARE_WEIGHT,
    BIG_NODE_GPUS,
    BIG_NODE_RULE_MAX_CONSTRAINED,
    BIG_NODE_RULE_WHOLE_SHARE,
    FIT_STEP_MILLI,
    MIN_WHOLE_SHARE,
    SHARE_STEP_MILLI,
    TIGHT_FIT_MILLI,
)
from tensorai.scheduler.core.types import ClusterArrays, PodDemand

COMPILED_POLICIES = frozenset({"fgd", "tensorai"})
_NO_SHAPES = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64),
              np.zeros((0, 1), dtype=bool), np.zeros(0, dtype=np.float64))


def covers(demand: PodDemand, policy: str) -> bool:
    """Whether `score_one_gpu` scores this pod: one non-init container on one GPU, no UUID/group rules."""
    return policy in COMPILED_POLICIES and demand.one_gpu and not demand.has_gpu_rules


@njit(cache=True, nogil=True)
def _score_rows(nodes, schedulable, gpu_count, node_model, cpu_free, memory_free, free_milli, free_mib, usable_mib,
                healthy, exclusive_gpu, model_allowed, milli, explicit_memory, memory_mib, cpu_milli, node_memory_mib,
                exclusive, t_cpu, t_milli, t_count, t_model_ok, t_p, s_cpu, s_milli, s_count, s_model_ok, s_p,
                share_terms, big_rule):  # pragma: no cover - jitted; the module doc and tests say what it mirrors
    count, width = nodes.shape[0], free_milli.shape[1]
    reason = np.zeros(count, dtype=np.int8)
    score = np.full(count, -np.inf)
    option = np.zeros(count, dtype=np.int64)
    gpu_slot = np.zeros(count, dtype=np.int64)
    gpu_memory = np.zeros(count, dtype=np.int64)
    whole = milli >= MILLI_PER_GPU
    need = np.zeros(width, dtype=np.int64)
    fit = np.zeros(width, dtype=np.bool_)
    free = np.zeros(width, dtype=np.int64)
    after = np.zeros(width, dtype=np.int64)
    for row in range(count):
        node = nodes[row]
        # fit.evaluate: node-level rules, first failing one wins
        code = OK
        model = node_model[node]
        if not schedulable[node]:
            code = UNSCHEDULABLE
        elif gpu_count[node] == 0:
            code = NO_GPUS
        elif model < 0 or not model_allowed[model]:
            code = MODEL
        elif cpu_free[node] < cpu_milli:
            code = CPU
        elif memory_free[node] < node_memory_mib:
            code = MEMORY
        any_allowed = False
        any_fit = False
        first_fit = -1
        untouched = 0
        for slot in range(width):
            gpu_free = free_milli[node, slot]
            # fit._gpu_filter
            allowed = healthy[node, slot] and gpu_free >= 0 and not exclusive_gpu[node, slot]
            if exclusive:
                allowed = allowed and gpu_free == MILLI_PER_GPU and free_mib[node, slot] == usable_mib[node, slot]
            any_allowed = any_allowed or allowed
            # fit._container_memory and fit._fits
            if explicit_memory:
                need[slot] = memory_mib
            elif whole:
                need[slot] = usable_mib[node, slot]
            else:
                need[slot] = (usable_mib[node, slot] * milli) // MILLI_PER_GPU
            if whole:
                fit[slot] = (allowed and gpu_free >= MILLI_PER_GPU and free_mib[node, slot] >= usable_mib[node, slot]
                             and free_mib[node, slot] >= need[slot])
            else:
                fit[slot] = allowed and gpu_free >= milli and free_mib[node, slot] >= need[slot]
            if fit[slot] and first_fit < 0:
                first_fit = slot
            any_fit = any_fit or fit[slot]
            # cluster.effective_free_milli
            usable = healthy[node, slot] and not exclusive_gpu[node, slot] and gpu_free > 0
            free[slot] = gpu_free if usable else 0
            if free[slot] >= MILLI_PER_GPU:
                untouched += 1
        if code == OK and not any_allowed:
            code = UUID
        if code == OK and not any_fit:
            code = GPU
        reason[row] = code
        if whole:  # fit._pick_whole with count 1: the first fitting slot (slot 0 when none fits)
            gpu_slot[row] = max(first_fit, 0)
            gpu_memory[row] = need[gpu_slot[row]]
        else:  # per-GPU options: option o = slot o; infeasible rows keep option 0 (argmax of all -inf)
            gpu_memory[row] = need[0]
        if code != OK:
            continue
        # policies.tensorai / fgd: FGD's gradient per valid option, best option first among equals
        before = _frag_row(free, cpu_free[node], model, t_cpu, t_milli, t_count, t_model_ok, t_p)
        share_before = 0.0
        if share_terms:
            share_before = _frag_row(free, cpu_free[node], model, s_cpu, s_milli, s_count, s_model_ok, s_p)
        penalty = 0.0
        if share_terms and big_rule and gpu_count[node] >= BIG_NODE_GPUS and untouched == gpu_count[node]:
            penalty = _BIG_NODE_PENALTY
        best = -np.inf
        best_option = 0
        for slot in range(width):
            if not fit[slot]:
                continue
            for other in range(width):
                after[other] = free[other]
            after[slot] = free[slot] - milli
            delta = before - _frag_row(after, cpu_free[node] - cpu_milli, model, t_cpu, t_milli, t_count,
                                       t_model_ok, t_p)
            value = quantise_one(delta)
            if share_terms:
                share_delta = share_before - _frag_row(after, cpu_free[node] - cpu_milli, model, s_cpu, s_milli,
                                                       s_count, s_model_ok, s_p)
                share_rank = np.floor(share_delta / SHARE_STEP_MILLI)
                fit_rank = np.floor(min(free[slot] - milli, TIGHT_FIT_MILLI) / FIT_STEP_MILLI)
                value = value + share_rank * _SHARE_WEIGHT - fit_rank * _FIT_WEIGHT - penalty
            if value > best:
                best = value
                best_option = slot
            if whole:
                break  # one option: the first fitting GPU
        score[row] = best
        if whole:
            option[row] = 0
        else:
            option[row] = best_option
            gpu_slot[row] = best_option
            gpu_memory[row] = need[best_option]
    return reason, score, option, gpu_slot, gpu_memory


def _model_allowed(cluster: ClusterArrays, demand: PodDemand) -> np.ndarray:
    """(models,) bool: the pod's tensor.ai/gpu-model include/exclude lists over the cluster's model ids."""
    allowed = [(demand.allowed_models is None or matches_any(demand.allowed_models, model))
               and not (demand.excluded_models and matches_any(demand.excluded_models, model))
               for model in cluster.models]
    return np.array(allowed or [False], dtype=bool)


def score_one_gpu(cluster: ClusterArrays, demand: PodDemand, policy: str, nodes: np.ndarray,
                  context: PolicyContext) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per row of `nodes`: (fit reason codes int8, node score (-inf = does not fit), best option, GPU slot, MiB).

    Exactly `placement._score` + the cache's slot/memory read for a pod `covers` accepts; the GPU slot
    and memory are what bind takes on that node.
    """
    container = demand.containers[0]
    workload = context.target() or DEFAULT_WORKLOAD
    target = workload.arrays(cluster.models)
    sharing = workload.sharing_only()
    whole_share = workload.whole_gpu_demand_share()
    share_terms = (policy == "tensorai" and container.milli < MILLI_PER_GPU and sharing is not None
                   and whole_share >= MIN_WHOLE_SHARE)
    big_rule = (whole_share >= BIG_NODE_RULE_WHOLE_SHARE
                and workload.constrained_share() <= BIG_NODE_RULE_MAX_CONSTRAINED)
    shares = sharing.arrays(cluster.models) if share_terms and sharing is not None else None
    share_arrays = _NO_SHAPES if shares is None else (shares.cpu_milli, shares.gpu_milli, shares.gpu_count,
                                                      shares.model_ok, shares.probability)
    return _score_rows(
        np.ascontiguousarray(nodes, dtype=np.int64), cluster.node_schedulable, cluster.gpu_count, cluster.node_model,
        cluster.node_cpu_free_milli, cluster.node_memory_free_mib, cluster.gpu_free_milli,
        cluster.gpu_free_memory_mib, cluster.gpu_usable_memory_mib, cluster.gpu_healthy, cluster.gpu_exclusive,
        _model_allowed(cluster, demand), int(container.milli),
        container.memory_mib is not None, int(container.memory_mib or 0), int(demand.cpu_milli),
        int(demand.memory_mib), bool(demand.exclusive),
        target.cpu_milli, target.gpu_milli, target.gpu_count, target.model_ok, target.probability, *share_arrays,
        share_terms, big_rule,
    )
