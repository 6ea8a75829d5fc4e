"""Fit rules on small hand-made clusters whose right answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from tensorai.scheduler.core.cluster import cluster_from_nodes
from tensorai.scheduler.core.fit import node_feasibility
from tensorai.scheduler.core.placement import apply_placement, choose_placement, place
from tensorai.scheduler.core.types import ContainerDemand, NodeSpec, PodDemand


def demand(*containers: ContainerDemand, cpu: int = 0, **extra) -> PodDemand:
    return PodDemand("ns", "pod", "uid", tuple(containers), cpu, 0, **extra)


def share(milli: int, name: str = "main", memory_mib: int | None = None, init: bool = False) -> ContainerDemand:
    return ContainerDemand(name, milli, 1, memory_mib, init)


def whole(count: int, name: str = "main") -> ContainerDemand:
    return ContainerDemand(name, 1000, count)


def two_gpu_node(free: tuple[int, int] = (1000, 1000), **spec) -> object:
    cluster = cluster_from_nodes([NodeSpec("n0", 64000, 65536, 2, "T4", **spec)])
    cluster.gpu_free_milli[0, :2] = free
    return cluster


def test_fractional_pod_never_spans_gpus():
    cluster = two_gpu_node(free=(600, 600))  # 1200 free in total, but no single GPU has 800
    feasible, reasons = node_feasibility(cluster, demand(share(800)))
    assert not feasible[0]
    assert reasons[0][1] is True  # evicting pods could make room
    assert node_feasibility(cluster, demand(share(600)))[0][0]


def test_whole_gpu_request_needs_fully_free_gpus():
    cluster = two_gpu_node(free=(1000, 999))
    assert node_feasibility(cluster, demand(whole(1)))[0][0]
    assert not node_feasibility(cluster, demand(whole(2)))[0][0]
    placement = choose_placement(cluster, demand(whole(1)), "binpack", 0)
    assert [c.gpu_slot for c in placement.choices] == [0]


def test_default_memory_is_the_share_of_usable_memory_after_the_reserve():
    cluster = cluster_from_nodes([NodeSpec("n0", 8000, 8192, 1, "T4", gpu_memory_mib=16384, reserved_mib=384)])
    placement = choose_placement(cluster, demand(share(250)), "fgd", 0)
    assert placement.choices[0].memory_mib == 4000  # 250/1000 of 16000 usable MiB


def test_explicit_memory_must_fit_on_the_same_gpu():
    cluster = cluster_from_nodes([NodeSpec("n0", 8000, 8192, 1, "T4", gpu_memory_mib=16384, reserved_mib=384)])
    assert not node_feasibility(cluster, demand(share(100, memory_mib=16001)))[0][0]
    placement = choose_placement(cluster, demand(share(100, memory_mib=16000)), "fgd", 0)
    apply_placement(cluster, demand(share(100, memory_mib=16000)), placement)
    # the GPU still has 900 milli free, but no memory: a share that needs memory cannot go there
    assert not node_feasibility(cluster, demand(share(100)))[0][0]


def test_exclusive_pod_takes_only_untouched_gpus_and_nothing_shares_them_later():
    cluster = two_gpu_node(free=(700, 1000))
    exclusive = demand(share(200), exclusive=True)
    placement = choose_placement(cluster, exclusive, "binpack", 0)
    assert [c.gpu_slot for c in placement.choices] == [1]
    apply_placement(cluster, exclusive, placement)
    assert cluster.gpu_exclusive[0, 1]
    later = choose_placement(cluster, demand(share(100)), "spread", 0)
    assert [c.gpu_slot for c in later.choices] == [0]  # the exclusive GPU is off limits despite 800 free


def test_anti_affinity_group_keeps_two_members_off_one_gpu():
    cluster = cluster_from_nodes([NodeSpec("n0", 8000, 8192, 2, "T4")])
    member = demand(share(100), anti_affinity_group="replicas")
    first = choose_placement(cluster, member, "binpack", 0)
    apply_placement(cluster, member, first)
    second = choose_placement(cluster, member, "binpack", 0)  # binpack would love the same GPU
    assert second.choices[0].gpu_slot != first.choices[0].gpu_slot
    apply_placement(cluster, member, second)
    assert not node_feasibility(cluster, member)[0][0]
    assert node_feasibility(cluster, demand(share(100), anti_affinity_group="other"))[0][0]


def test_model_include_and_exclude_lists_are_unresolvable():
    cluster = cluster_from_nodes([NodeSpec("t4", 8000, 8192, 1, "T4"), NodeSpec("a100", 8000, 8192, 1, "A100")])
    mask, reasons = node_feasibility(cluster, demand(share(100), allowed_models=frozenset({"A100"})))
    assert mask.tolist() == [False, True]
    assert reasons[0][1] is False
    mask, _ = node_feasibility(cluster, demand(share(100), excluded_models=frozenset({"A100"})))
    assert mask.tolist() == [True, False]


def test_uuid_include_and_exclude_choose_gpus():
    cluster = cluster_from_nodes([NodeSpec("n0", 8000, 8192, 2, "T4", gpu_uuids=("GPU-a", "GPU-b"))])
    only_b = choose_placement(cluster, demand(share(100), allowed_uuids=frozenset({"GPU-b"})), "binpack", 0)
    assert only_b.choices[0].uuid == "GPU-b"
    not_a = choose_placement(cluster, demand(share(100), excluded_uuids=frozenset({"GPU-a"})), "binpack", 0)
    assert not_a.choices[0].uuid == "GPU-b"
    mask, reasons = node_feasibility(cluster, demand(share(100), allowed_uuids=frozenset({"GPU-z"})))
    assert not mask[0] and reasons[0][1] is False


def test_unschedulable_node_is_infeasible_and_preemption_cannot_help():
    cluster = two_gpu_node()
    cluster.node_schedulable[0] = False
    mask, reasons = node_feasibility(cluster, demand(share(100)))
    assert not mask[0]
    assert reasons[0] == (reasons[0][0], False) and "schedulable" in reasons[0][0]


def test_cpu_shortage_is_resolvable():
    cluster = two_gpu_node()
    mask, reasons = node_feasibility(cluster, demand(share(100), cpu=65000))
    assert not mask[0] and reasons[0] == ("insufficient cpu", True)


def test_unhealthy_gpu_is_never_chosen():
    cluster = two_gpu_node()
    cluster.gpu_healthy[0, 0] = False
    placement = choose_placement(cluster, demand(share(100)), "binpack", 0)
    assert placement.choices[0].gpu_slot == 1
    assert not node_feasibility(cluster, demand(whole(2)))[0][0]


def test_several_gpu_containers_never_double_use_a_gpu():
    cluster = two_gpu_node(free=(600, 1000))
    pod = demand(share(500, "a"), share(500, "b"), whole(1, "c"))
    assert not node_feasibility(cluster, pod)[0][0]  # c needs GPU 1 whole, a and b cannot both fit GPU 0
    pod = demand(share(300, "a"), share(300, "b"), whole(1, "c"))
    placement = choose_placement(cluster, pod, "fgd", 0)
    slots = {c.container: c.gpu_slot for c in placement.choices}
    assert slots == {"a": 0, "b": 0, "c": 1}
    apply_placement(cluster, pod, placement)
    assert cluster.gpu_free_milli[0, :2].tolist() == [0, 0]


def test_a_two_gpu_init_container_before_a_share_keeps_both_gpus_held_while_the_pod_runs():
    # kubelet hands the init container's IDs on to the app and keeps the leftovers (kubernetes#71312)
    cluster = two_gpu_node(free=(1000, 1000))
    pod = demand(ContainerDemand("warmup", 1000, 2, None, True), share(500, "app"))
    placement = choose_placement(cluster, pod, "fgd", 0)
    slots = {}
    for choice in placement.choices:
        slots.setdefault(choice.container, []).append(choice.gpu_slot)
    assert sorted(slots["warmup"]) == [0, 1] and slots["app"][0] in slots["warmup"]
    apply_placement(cluster, pod, placement)
    assert cluster.gpu_free_milli[0, :2].tolist() == [0, 0]
    too_big = demand(ContainerDemand("warmup", 1000, 2, None, True))
    assert not node_feasibility(cluster, too_big)[0][0]


def test_multi_gpu_request_prefers_one_numa_node():
    cluster = cluster_from_nodes([NodeSpec("n0", 64000, 65536, 4, "A100", gpu_numa=(0, 1, 1, 0))])
    cluster.gpu_free_milli[0, 0] = 500  # NUMA 0 keeps only one free GPU
    placement = choose_placement(cluster, demand(whole(2)), "fgd", 0)
    assert sorted(c.gpu_slot for c in placement.choices) == [1, 2]


def test_place_returns_none_when_nothing_fits_and_breaks_ties_by_node_order():
    cluster = cluster_from_nodes([NodeSpec(f"n{i}", 8000, 8192, 1, "T4") for i in range(3)])
    assert place(cluster, demand(whole(2)), "fgd") is None
    order = np.array([2, 0, 1])
    assert place(cluster, demand(share(100)), "fgd", node_order=order).node_index == 2


REPORTED_NODES = [  # the names NVML reports on real nodes (proto/gpumodels.py has the rules)
    NodeSpec("h100-sxm", 8000, 8192, 1, "NVIDIA H100 80GB HBM3", 81559, 600),
    NodeSpec("h100-nvl", 8000, 8192, 1, "NVIDIA H100 NVL", 95830, 600),
    NodeSpec("a100-40", 8000, 8192, 1, "NVIDIA A100-PCIE-40GB", 40960, 600),
    NodeSpec("a100-80", 8000, 8192, 1, "NVIDIA A100-SXM4-80GB", 81920, 600),
    NodeSpec("l40s", 8000, 8192, 1, "NVIDIA L40S", 46068, 600),
    NodeSpec("l4", 8000, 8192, 1, "NVIDIA L4", 23034, 600),
]


@pytest.mark.parametrize(("allowed", "excluded", "feasible"), [
    ({"H100"}, set(), {"h100-sxm", "h100-nvl"}),
    ({"A100", "H100"}, set(), {"h100-sxm", "h100-nvl", "a100-40", "a100-80"}),
    ({"A100-80GB"}, set(), {"a100-80"}),
    ({"h100"}, {"H100-NVL"}, {"h100-sxm"}),
    ({"L4"}, set(), {"l4"}),
    (None, {"A100", "L40S"}, {"h100-sxm", "h100-nvl", "l4"}),
    ({"H100-SXM5"}, set(), set()),
])
@pytest.mark.parametrize("policy", ["tensorai", "fgd", "binpack"])
def test_model_lists_as_users_write_them_match_the_names_gpus_report(
    allowed: set[str] | None, excluded: set[str], feasible: set[str], policy: str
) -> None:
    cluster = cluster_from_nodes(REPORTED_NODES)
    pod = demand(share(100), allowed_models=None if allowed is None else frozenset(allowed),
                 excluded_models=frozenset(excluded))
    mask, _ = node_feasibility(cluster, pod)
    assert {cluster.node_names[i] for i in np.flatnonzero(mask)} == feasible
    # the compiled one-GPU scorer (the score cache's path) applies the same rule
    placement = place(cluster, pod, policy)
    assert (placement.node_name if placement else None) in (feasible or {None})
