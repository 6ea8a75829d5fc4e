"""The compiled one-GPU scorer (policies/onegpu.py) is a second implementation of fit + fgd/tensorai:
on random clusters, pods and workloads it must give the general path's reasons, scores, options and
the GPU slot and memory bind takes, to the last bit."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tensorai.scheduler.core.cluster import cluster_from_nodes
from tensorai.scheduler.core.context import PolicyContext
from tensorai.scheduler.core.placement import ScoreCache, _score, place
from tensorai.scheduler.core.policies.onegpu import covers, score_one_gpu
from tensorai.scheduler.core.shapes import Shape, TargetWorkload
from tensorai.scheduler.core.types import ContainerDemand, NodeSpec, PodDemand

MODELS = ("A100", "T4", "H100")
MILLI = st.sampled_from([50, 100, 250, 330, 470, 500, 750, 990, 1000])


@st.composite
def clusters(draw):
    """Nodes of 0-8 GPUs, of three models, partly used, some GPUs unhealthy / exclusive, some nodes down."""
    count = draw(st.integers(1, 6))
    specs = []
    for index in range(count):
        gpus = draw(st.sampled_from([0, 1, 2, 4, 8]))
        specs.append(NodeSpec(f"n{index}", draw(st.sampled_from([500, 4000, 32000])),
                              draw(st.sampled_from([1024, 65536])), gpus, draw(st.sampled_from(MODELS)),
                              gpu_memory_mib=draw(st.sampled_from([16384, 40960])),
                              reserved_mib=draw(st.sampled_from([0, 512]))))
    cluster = cluster_from_nodes(specs)
    for node, spec in enumerate(specs):
        cluster.node_schedulable[node] = draw(st.booleans()) or draw(st.booleans())
        if draw(st.booleans()):  # untouched: what tensorai's 8-GPU rule protects
            continue
        for slot in range(spec.gpu_count):
            used = draw(st.sampled_from([0, 0, 0, 100, 250, 500, 530, 750, 900, 1000]))
            cluster.gpu_free_milli[node, slot] -= used
            cluster.gpu_free_memory_mib[node, slot] -= cluster.gpu_usable_memory_mib[node, slot] * used // 1000
            cluster.gpu_free_memory_mib[node, slot] -= draw(st.sampled_from([0, 0, 1, 3000]))
            cluster.gpu_healthy[node, slot] = draw(st.integers(0, 9)) > 0
            cluster.gpu_exclusive[node, slot] = draw(st.integers(0, 9)) == 0
    return cluster


@st.composite
def pods(draw):
    milli = draw(MILLI)
    memory = draw(st.sampled_from([None, None, 0, 2000, 8000]))
    models = draw(st.sampled_from([None, frozenset({"A100"}), frozenset({"T4", "H100"})]))
    excluded = draw(st.sampled_from([frozenset(), frozenset({"T4"})]))
    return PodDemand("ns", "p", "u", (ContainerDemand("c", milli, 1, memory),),
                     draw(st.sampled_from([0, 1000, 4000, 8000])), draw(st.sampled_from([0, 1024, 4096, 40000])),
                     models, excluded, exclusive=draw(st.integers(0, 5)) == 0)


@st.composite
def workloads(draw):
    """Target mixes that switch tensorai's share terms and its untouched-8-GPU rule on and off."""
    shapes = []
    for _ in range(draw(st.integers(1, 5))):
        milli = draw(st.sampled_from([0, 100, 250, 500, 1000]))
        count = draw(st.sampled_from([1, 2, 8])) if milli == 1000 else (1 if milli else 0)
        shapes.append(Shape(draw(st.sampled_from([0, 2000])), milli, count,
                            draw(st.sampled_from([None, None, frozenset({"T4"})]))))
    shapes = list(dict.fromkeys(shapes))
    weights = np.array(draw(st.lists(st.integers(1, 5), min_size=len(shapes), max_size=len(shapes))), dtype=np.float64)
    return TargetWorkload(tuple(shapes), weights / weights.sum())


def _general(cluster, demand, policy, nodes, context):
    """What ScoreCache kept before the compiled path: _score plus the slot/memory read for bind."""
    evaluation, node_score, option = _score(cluster, demand, policy, nodes, context)
    rows = np.arange(len(nodes))
    if evaluation.per_gpu:
        slot, memory = option, evaluation.slot_memory[rows, option]
    else:
        slot, memory = evaluation.container_slots[0][:, 0], evaluation.container_memory[0][:, 0]
    return evaluation.reason, node_score, option, slot, memory


@settings(max_examples=400, deadline=None)
@given(cluster=clusters(), demand=pods(), workload=st.none() | workloads(),
       policy=st.sampled_from(["fgd", "tensorai"]), data=st.data())
def test_compiled_scorer_equals_the_general_path(cluster, demand, workload, policy, data) -> None:
    assert covers(demand, policy)
    nodes = np.array(data.draw(st.permutations(range(len(cluster.node_names)))), dtype=np.int64)
    context = PolicyContext(workload=workload)
    fast = score_one_gpu(cluster, demand, policy, nodes, context)
    general = _general(cluster, demand, policy, nodes, context)
    for got, expected, name in zip(fast, general, ("reason", "score", "option", "gpu slot", "memory"), strict=True):
        np.testing.assert_array_equal(got, expected, err_msg=name)


def test_only_the_common_pods_are_covered() -> None:
    share = ContainerDemand("c", 250, 1)
    assert covers(PodDemand("ns", "p", "u", (share,)), "tensorai")
    assert covers(PodDemand("ns", "p", "u", (ContainerDemand("c", 1000, 1),)), "fgd")
    assert not covers(PodDemand("ns", "p", "u", (share,)), "binpack")
    assert not covers(PodDemand("ns", "p", "u", (ContainerDemand("c", 1000, 2),)), "tensorai")
    assert not covers(PodDemand("ns", "p", "u", (ContainerDemand("i", 250, 1, init=True), share)), "tensorai")
    assert not covers(PodDemand("ns", "p", "u", (share,), anti_affinity_group="g"), "tensorai")
    assert not covers(PodDemand("ns", "p", "u", (share,), excluded_uuids=frozenset({"x"})), "tensorai")


@settings(max_examples=60, deadline=None)
@given(cluster=clusters(), sequence=st.lists(st.tuples(MILLI, st.sampled_from(["fgd", "tensorai"])), max_size=12))
def test_placements_through_the_cache_equal_uncached_ones(cluster, sequence) -> None:
    """The score cache now takes the compiled path for these pods: the simulator's choices must not change."""
    from tensorai.scheduler.core.cluster import copy_cluster
    from tensorai.scheduler.core.placement import apply_placement

    cached, fresh = cluster, copy_cluster(cluster)
    cached_context, fresh_context = PolicyContext(), PolicyContext(use_cache=False)
    for index, (milli, policy) in enumerate(sequence):
        demand = PodDemand("ns", f"p{index}", f"u{index}", (ContainerDemand("c", milli, 1),), 500, 1024)
        a = place(cached, demand, policy, context=cached_context)
        b = place(fresh, demand, policy, context=fresh_context)
        assert a == b
        if a is not None:
            apply_placement(cached, demand, a)
            apply_placement(fresh, demand, b)
    assert isinstance(cached_context.cache, ScoreCache) or not sequence
