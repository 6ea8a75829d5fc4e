"""Prioritize scores kube-scheduler can act on: the node the simulator's `place()` picks gets the only 10."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_extender_support import assigned_pod, node, pod

from tensorai.scheduler.core.cluster import cluster_from_nodes
from tensorai.scheduler.core.context import PolicyContext
from tensorai.scheduler.core.placement import apply_placement, place, score_nodes
from tensorai.scheduler.core.ranking import node_order_key, rank_extender_scores, stable_node_order
from tensorai.scheduler.core.types import ContainerDemand, PodDemand
from tensorai.scheduler.extender import ExtenderService
from tensorai.scheduler.view import ClusterView

DETERMINISTIC_POLICIES = ("bestfit", "binpack", "spread", "fgd", "tensorai")


def _demand(name: str, milli: int, count: int = 1) -> PodDemand:
    return PodDemand("ml", name, name, (ContainerDemand("c", milli, count),), cpu_milli=100, memory_mib=64)


@st.composite
def clusters_and_pods(draw: st.DrawFn) -> tuple:
    node_count = draw(st.integers(1, 7))
    gpus = [draw(st.integers(1, 4)) for _ in range(node_count)]
    names = draw(st.lists(st.text("abcxyz-0123", min_size=1, max_size=6), min_size=node_count,
                          max_size=node_count, unique=True))
    cluster = cluster_from_nodes([(name, 64_000, 256_000, count, "H100") for name, count in zip(names, gpus,
                                                                                               strict=True)])
    sizes = st.sampled_from([125, 250, 500, 750, 1000])
    background = draw(st.lists(sizes, max_size=12))
    milli = draw(st.sampled_from([(125, 1), (250, 1), (500, 1), (1000, 1), (1000, 2)]))
    policy = draw(st.sampled_from(DETERMINISTIC_POLICIES))
    return cluster, background, milli, policy


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clusters_and_pods())
def test_argmax_of_extender_scores_is_the_node_place_picks(case: tuple) -> None:
    cluster, background, milli, policy = case
    order = stable_node_order(cluster.node_names)
    for position, size in enumerate(background):  # a random partly-used cluster, filled as the simulator does
        demand = _demand(f"bg{position}", size)
        placed = place(cluster, demand, policy, node_order=order, context=PolicyContext(use_cache=False))
        if placed is not None:
            apply_placement(cluster, demand, placed)
    demand = _demand("target", *milli)
    chosen = place(cluster, demand, policy, node_order=order, context=PolicyContext(use_cache=False))
    scores, _ = score_nodes(cluster, demand, policy, context=PolicyContext(use_cache=False))
    ranked = rank_extender_scores(scores, order)
    assert ranked.min() >= 0 and ranked.max() <= 10
    if chosen is None:
        assert not ranked.any(), "no node fits, so every node must score 0"
        return
    assert int(np.argmax(ranked)) == chosen.node_index
    assert ranked[chosen.node_index] == 10 and np.count_nonzero(ranked == 10) == 1, "the 10 must be unique"
    assert np.all(ranked[~np.isfinite(scores)] == 0)


@given(st.lists(st.one_of(st.floats(-5, 5), st.just(-np.inf)), min_size=1, max_size=40), st.randoms())
def test_ranked_scores_never_contradict_the_policy_order(raw: list[float], rng) -> None:
    scores = np.array(raw)
    order = np.array(rng.sample(range(len(raw)), len(raw)), dtype=np.int64)
    ranked = rank_extender_scores(scores, order)
    feasible = np.flatnonzero(np.isfinite(scores))
    for a in feasible:
        for b in feasible:
            if scores[a] > scores[b]:
                assert ranked[a] >= ranked[b], "a better policy score must never rank lower"
    assert np.all(ranked[~np.isfinite(scores)] == 0)
    if feasible.size >= 2:
        assert sorted(ranked[feasible])[-2] == 9, "the runner-up always gets 9"


def test_stable_node_order_does_not_depend_on_list_order_or_process() -> None:
    names = [f"pool-a-{i:03d}" for i in range(50)] + [f"pool-b-{i:03d}" for i in range(50)]
    forward = [names[i] for i in stable_node_order(names)]
    backward = [list(reversed(names))[i] for i in stable_node_order(list(reversed(names)))]
    assert forward == backward
    assert forward != sorted(names), "alphabetical order would fill pool-a before pool-b"
    first_half = set(forward[:50])
    assert 10 < sum(name.startswith("pool-a") for name in first_half) < 40, "the hash must mix the pools"
    other_process = subprocess.run(
        [sys.executable, "-c", "from tensorai.scheduler.core.ranking import node_order_key as k; print(k('gpu-1'))"],
        env={**os.environ, "PYTHONHASHSEED": "12345"}, capture_output=True, text=True, timeout=60, check=True,
    )
    assert int(other_process.stdout) == node_order_key("gpu-1"), "replicas and restarts must agree on the order"


def test_rank_rejects_an_order_of_the_wrong_length() -> None:
    with pytest.raises(ValueError, match="shape"):
        rank_extender_scores(np.zeros(3), np.arange(2))


def _view_with_tied_nodes(count: int) -> ClusterView:
    view = ClusterView(stale_seconds=0)
    for index in range(count):
        view.upsert_node(node(f"gpu-{index}", 2))
    return view


def test_prioritize_gives_place_s_node_the_only_ten_where_min_max_tied_them_all() -> None:
    view = _view_with_tied_nodes(8)  # eight empty identical nodes: min-max gave every one of them 10
    names = [f"gpu-{index}" for index in range(8)]
    service = ExtenderService(view, policy="tensorai")
    answer = service.prioritize({"Pod": pod("p", 250), "Nodes": None, "NodeNames": names})
    scores = {entry["Host"]: entry["Score"] for entry in answer}
    assert sorted(scores.values(), reverse=True)[:2] == [10, 9]
    expected = place(view.cluster, _demand("p", 250), "tensorai", node_order=_row_order(view, names),
                     candidates=np.array([view.node_index(n) for n in names]), context=PolicyContext(use_cache=False))
    assert expected is not None and scores[expected.node_name] == 10


def _row_order(view: ClusterView, names: list[str]) -> np.ndarray:
    """stable_node_order over the requested names, as rows of the view's arrays (unknown rows last)."""
    rows = np.array([view.node_index(name) for name in names], dtype=np.int64)
    ordered = rows[stable_node_order(names)]
    rest = np.setdiff1d(np.arange(len(view.cluster.node_names)), ordered)
    return np.concatenate([ordered, rest])


def test_prioritize_prefers_the_partly_used_gpu_node_like_the_simulator() -> None:
    view = _view_with_tied_nodes(6)
    view.upsert_pod(assigned_pod("running", "gpu-4", [(0, 500)]))  # half a GPU used on gpu-4
    names = [f"gpu-{index}" for index in range(6)]
    service = ExtenderService(view, policy="bestfit")
    answer = service.prioritize({"Pod": pod("p", 250), "Nodes": None, "NodeNames": names})
    assert [entry["Host"] for entry in answer if entry["Score"] == 10] == ["gpu-4"]


@settings(max_examples=60, deadline=None)
@given(picks=st.lists(st.integers(0, 11), max_size=14), collide=st.booleans())
def test_the_extender_orders_any_requested_subset_as_stable_node_order_does(picks: list[int], collide: bool) -> None:
    """The per-row rank shortcut (all names known) and the per-name path (an unknown name) both give
    stable_node_order of the requested list: duplicates, any subset, and colliding order keys."""
    import tensorai.scheduler.core.ranking as ranking_module
    import tensorai.scheduler.extender as extender_module

    view = _view_with_tied_nodes(10)
    service = ExtenderService(view)
    names = [f"gpu-{index}" for index in range(10)] + ["ghost", "gpu-3"]
    requested = [names[index] for index in picks]
    positions = np.array([view.row_of.get(name, -1) for name in requested], dtype=np.int64)
    original = ranking_module.node_order_key
    if collide:  # every name the same key: the names alone decide
        extender_module.node_order_key = ranking_module.node_order_key = lambda name: 7
    try:
        got = service._node_order(requested, positions)
    finally:
        extender_module.node_order_key = ranking_module.node_order_key = original
    expected_keys = None if not collide else np.full(len(requested), 7, dtype=np.uint64)
    np.testing.assert_array_equal(got, stable_node_order(requested, expected_keys))


@pytest.mark.parametrize("policy", DETERMINISTIC_POLICIES)
def test_filter_keeps_only_the_best_nodes_and_prioritize_s_ten_is_among_them(policy: str) -> None:
    view = _view_with_tied_nodes(120)
    for index in range(0, 120, 7):  # partly used nodes, so the policies disagree about the best ones
        view.upsert_pod(assigned_pod(f"running-{index}", f"gpu-{index}", [(index % 2, 250 + 125 * (index % 4))]))
    names = [f"gpu-{index}" for index in range(120)]
    args = {"Pod": pod("p", 250), "Nodes": None, "NodeNames": names}
    everything = ExtenderService(view, policy=policy, max_feasible_nodes=0)
    assert len(everything.filter(args)["NodeNames"]) == 120
    full = {entry["Host"]: entry["Score"] for entry in everything.prioritize(args)}
    best = ExtenderService(view, policy=policy, max_feasible_nodes=32)
    answer = best.filter(args)
    kept = answer["NodeNames"]
    assert len(kept) == 32 and answer["FailedNodes"] == {} and answer["FailedAndUnresolvableNodes"] == {}
    assert kept == [name for name in names if name in set(kept)], "request order kept"
    winner = next(host for host, score in full.items() if score == 10)
    assert winner in kept
    # the 32 are the first 32 of prioritize's ranking over all nodes (its scores fall in bands: compare sets)
    assert min(full[name] for name in kept) >= max(full[name] for name in names if name not in kept)
    narrowed = {entry["Host"]: entry["Score"] for entry in best.prioritize({**args, "NodeNames": kept})}
    assert narrowed[winner] == 10


def test_filter_keeps_every_fitting_node_when_few_fit() -> None:
    view = _view_with_tied_nodes(40)
    for index in range(40):
        if index % 4:  # 30 of 40 nodes full
            view.upsert_pod(assigned_pod(f"full-{index}", f"gpu-{index}", [(0, 1000), (1, 1000)]))
    names = [f"gpu-{index}" for index in range(40)]
    answer = ExtenderService(view, policy="tensorai", max_feasible_nodes=32).filter(
        {"Pod": pod("p", 250), "Nodes": None, "NodeNames": names})
    assert answer["NodeNames"] == [f"gpu-{index}" for index in range(0, 40, 4)]
    assert len(answer["FailedNodes"]) == 30
