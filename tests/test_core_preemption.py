"""core.preemption and cluster_rows: the what-if of evicting victims, on a copy of only the candidates' rows."""

from __future__ import annotations

import numpy as np
import pytest

from tensorai.scheduler.core.cluster import cluster_from_nodes, cluster_rows
from tensorai.scheduler.core.placement import apply_placement, choose_placement
from tensorai.scheduler.core.preemption import fits_after_release
from tensorai.scheduler.core.types import ContainerDemand, PodDemand


def _demand(name: str, milli: int, count: int = 1, group: str | None = None) -> PodDemand:
    return PodDemand("ns", name, name, (ContainerDemand("c", milli, count),), anti_affinity_group=group)


def _cluster_with_victims():
    """a, b, c: one GPU each; b's GPU is held by v1 (600) and v2 (400), c's by v3 (1000, group g)."""
    cluster = cluster_from_nodes([("a", 4000, 8192, 1, "T4"), ("b", 4000, 8192, 1, "T4"), ("c", 4000, 8192, 1, "T4")])
    held = {}
    for name, node, milli, group in (("v1", 1, 600, None), ("v2", 1, 400, None), ("v3", 2, 1000, "g")):
        demand = _demand(name, milli, group=group)
        placement = choose_placement(cluster, demand, "binpack", node)
        apply_placement(cluster, demand, placement)
        held[name] = (demand, placement)
    return cluster, held


def test_rows_are_copied_renumbered_and_leave_the_cluster_alone():
    cluster, _ = _cluster_with_victims()
    rows = cluster_rows(cluster, np.array([2, 1]))
    assert rows.node_names == ["c", "b"]
    assert rows.gpu_free_milli[:, 0].tolist() == [0, 0]
    assert rows.gpu_groups == {(0, 0): frozenset({"g"})}
    rows.gpu_free_milli[:] = 1000
    assert cluster.gpu_free_milli[1:, 0].tolist() == [0, 0]


def test_a_row_named_twice_is_refused():
    cluster, _ = _cluster_with_victims()
    with pytest.raises(ValueError, match="twice"):
        cluster_rows(cluster, np.array([1, 1]))


def test_the_pod_fits_only_where_the_released_victims_free_enough():
    cluster, held = _cluster_with_victims()
    rows = cluster_rows(cluster, np.array([1, 2]))
    v1, v2, v3 = held["v1"], held["v2"], held["v3"]
    # 500 milli: on b evicting v1 (600) is enough; on c evicting v3 frees the GPU and its group
    fits = fits_after_release(rows, _demand("p", 500, group="g"), [(0, *v1), (1, *v3)])
    assert fits.tolist() == [True, True]
    rows = cluster_rows(cluster, np.array([1]))
    assert fits_after_release(rows, _demand("whole", 1000), [(0, *v2)]).tolist() == [False]
    rows = cluster_rows(cluster, np.array([1]))
    assert fits_after_release(rows, _demand("whole", 1000), [(0, *v1), (0, *v2)]).tolist() == [True]
    assert cluster.gpu_free_milli[1, 0] == 0  # the cluster itself never changed
