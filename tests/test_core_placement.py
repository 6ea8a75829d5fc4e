"""Scoring, bind-time GPU choice, capacity accounting and the score cache."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tensorai.scheduler.core.cluster import cluster_from_nodes, copy_cluster
from tensorai.scheduler.core.context import PolicyContext
from tensorai.scheduler.core.placement import (
    POLICIES,
    PolicyError,
    ScoreCache,
    apply_placement,
    choose_placement,
    place,
    release_placement,
    score_nodes,
    to_extender_scores,
)
from tensorai.scheduler.core.types import ContainerDemand, NodeSpec, PodDemand


def demand(milli: int, count: int = 1, cpu: int = 1000, **extra) -> PodDemand:
    return PodDemand("ns", f"pod-{milli}-{count}", "uid", (ContainerDemand("main", milli, count),), cpu, 1024, **extra)


def small_cluster():
    return cluster_from_nodes([
        NodeSpec("big", 96000, 393216, 8, "G2"),
        NodeSpec("t4a", 32000, 131072, 2, "T4"),
        NodeSpec("t4b", 32000, 131072, 2, "T4"),
    ])


@pytest.mark.parametrize("policy", [p for p in POLICIES if p != "random"])
def test_bind_choice_is_the_placement_the_node_was_scored_with(policy):
    cluster = small_cluster()
    cluster.gpu_free_milli[1, 0] = 300
    scores, placements = score_nodes(cluster, demand(250), policy)
    for node in range(3):
        chosen = choose_placement(cluster, demand(250), policy, node)
        assert chosen == placements[node]
        assert chosen.score == scores[node]


def test_random_policy_needs_a_handed_in_rng_and_is_reproducible():
    cluster = small_cluster()
    with pytest.raises(ValueError, match="rng"):
        place(cluster, demand(250), "random")
    picks = [place(cluster, demand(250), "random", context=PolicyContext(rng=np.random.default_rng(7))).node_index
             for _ in range(3)]
    assert len(set(picks)) == 1


def test_unknown_policy_is_an_error():
    with pytest.raises(PolicyError, match="binpack"):
        score_nodes(small_cluster(), demand(250), "fastest")


def test_binpack_fills_a_used_gpu_and_spread_an_empty_node():
    cluster = small_cluster()
    cluster.gpu_free_milli[1, 0] = 500
    assert place(cluster, demand(400), "binpack").choices[0].gpu_slot == 0
    assert place(cluster, demand(400), "binpack").node_index == 1
    assert place(cluster, demand(400), "spread").node_index == 0  # the emptiest node after placement


def test_fgd_keeps_whole_gpus_for_whole_gpu_pods():
    cluster = small_cluster()
    cluster.gpu_free_milli[1, 0] = 300  # t4a GPU 0 has a 300-milli hole
    placement = place(cluster, demand(250), "fgd")
    assert (placement.node_index, placement.choices[0].gpu_slot) == (1, 0)  # the hole, not a fresh GPU


def test_tensorai_keeps_sharing_pods_off_untouched_eight_gpu_nodes():
    cluster = small_cluster()
    assert place(cluster, demand(250), "tensorai").node_index != 0
    only_big = cluster_from_nodes([NodeSpec("big", 96000, 393216, 8, "G2")])
    assert place(only_big, demand(250), "tensorai").node_index == 0  # still used when nothing else fits


def test_extender_scores_map_best_to_10_worst_to_0_and_keep_order():
    scores = np.array([3.0, -np.inf, 7.0, 5.0, 7.0])
    mapped = to_extender_scores(scores)
    assert mapped.tolist() == [0, 0, 10, 5, 10]
    assert to_extender_scores(np.array([4.0, 4.0])).tolist() == [10, 10]
    assert to_extender_scores(np.array([-np.inf])).tolist() == [0]


def test_pod_annotation_policy_overrides_the_cluster_default():
    cluster = small_cluster()
    cluster.gpu_free_milli[1, 0] = 500
    spread_pod = demand(400, policy="spread")
    assert place(cluster, spread_pod, "binpack").node_index == 0


def test_apply_refuses_a_placement_that_no_longer_fits_and_changes_nothing():
    cluster = small_cluster()
    placement = place(cluster, demand(800), "binpack")
    apply_placement(cluster, demand(800), placement)
    before = copy_cluster(cluster)
    with pytest.raises(ValueError, match="no longer fits"):
        apply_placement(cluster, demand(800), placement)
    assert np.array_equal(before.gpu_free_milli, cluster.gpu_free_milli)
    assert np.array_equal(before.node_cpu_free_milli, cluster.node_cpu_free_milli)


pods = st.lists(
    st.tuples(st.sampled_from([50, 160, 250, 320, 470, 810, 1000]), st.sampled_from([1, 1, 1, 2, 4]),
              st.sampled_from(POLICIES), st.booleans()),
    min_size=1, max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(pods)
def test_no_over_commit_and_release_restores_the_arrays(sequence):
    cluster = small_cluster()
    original = copy_cluster(cluster)
    context = PolicyContext(rng=np.random.default_rng(0))
    placed = []
    for index, (milli, count, policy, exclusive) in enumerate(sequence):
        count = 1 if milli < 1000 else count
        pod = PodDemand("ns", f"p{index}", f"u{index}", (ContainerDemand("c", milli, count),), 2000, 4096,
                        exclusive=exclusive)
        placement = place(cluster, pod, policy, context=context)
        if placement is not None:
            apply_placement(cluster, pod, placement)
            placed.append((pod, placement))
        real = cluster.gpu_free_milli[cluster.gpu_free_milli >= 0]
        assert real.min() >= 0 and real.max() <= 1000
        assert (cluster.gpu_free_memory_mib >= 0).all()
        assert (cluster.node_cpu_free_milli >= 0).all() and (cluster.node_memory_free_mib >= 0).all()
    for pod, placement in reversed(placed):
        release_placement(cluster, pod, placement)
    for name in ("gpu_free_milli", "gpu_free_memory_mib", "node_cpu_free_milli", "node_memory_free_mib",
                 "gpu_exclusive"):
        assert np.array_equal(getattr(cluster, name), getattr(original, name)), name
    assert cluster.gpu_groups == {}


@settings(max_examples=30, deadline=None)
@given(pods)
def test_cache_matches_fresh_scores(sequence):
    cached, fresh = small_cluster(), small_cluster()
    cached_context, fresh_context = PolicyContext(), PolicyContext(use_cache=False)
    order = np.array([2, 0, 1])
    for index, (milli, count, policy, _exclusive) in enumerate(sequence):
        if policy == "random":
            continue
        count = 1 if milli < 1000 else count
        pod = PodDemand("ns", f"p{index}", f"u{index}", (ContainerDemand("c", milli, count),), 2000, 4096)
        a = place(cached, pod, policy, node_order=order, context=cached_context)
        b = place(fresh, pod, policy, node_order=order, context=fresh_context)
        assert a == b
        if a is not None:
            apply_placement(cached, pod, a)
            apply_placement(fresh, pod, b)


def test_tensorai_prefers_a_near_perfect_fit_anywhere_over_a_fresh_gpu_first_in_order():
    cluster = cluster_from_nodes([NodeSpec("fresh", 32000, 131072, 2, "T4"), NodeSpec("holey", 32000, 131072, 2, "T4")])
    cluster.gpu_free_milli[1] = [1000, 520]
    placement = place(cluster, demand(470), "tensorai", node_order=np.array([0, 1]))
    assert (placement.node_index, placement.choices[0].gpu_slot) == (1, 1)  # leaves 50 milli, not a 530 sliver


@pytest.mark.parametrize("exclusive", [False, True])
def test_placement_fields_name_every_array_a_placement_writes(exclusive: bool) -> None:
    """The score cache trusts the view's placement log to re-check only ScoreCache._PLACEMENT_FIELDS:
    applying or releasing a pod must not write any other array it snapshots."""
    from tensorai.scheduler.view import _force_apply

    cluster = cluster_from_nodes([NodeSpec("a", 8000, 65536, 2, "T4"), NodeSpec("b", 8000, 65536, 2, "T4")])
    pod = PodDemand("ns", "p", "u", (ContainerDemand("c", 1000 if exclusive else 250, 1, 1000),), 500, 1024,
                    exclusive=exclusive)
    placement = choose_placement(cluster, pod, "tensorai", 1)
    for write in (apply_placement, release_placement, _force_apply):
        before = copy_cluster(cluster)
        write(cluster, pod, placement)
        changed = {name for name in ScoreCache._FIELDS
                   if not np.array_equal(getattr(cluster, name), getattr(before, name))}
        assert changed and changed <= set(ScoreCache._PLACEMENT_FIELDS), (write.__name__, changed)
