"""GPU init containers go on the GPU of the container after them, and the pod counts what kubelet keeps held.

kubelet hands a finished init container's device IDs on to the pod's next container before any free
ID and keeps the leftovers until the pod ends (kubernetes#71312); sidecars keep their own IDs. The
property test checks the core's arrays against an independent replay of that with real ID sets.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tensorai.scheduler.core.cluster import cluster_from_nodes, copy_cluster
from tensorai.scheduler.core.fit import INIT_GPU, REASON_TEXT, node_feasibility
from tensorai.scheduler.core.initchain import anchors, held_sequence
from tensorai.scheduler.core.placement import apply_placement, choose_placement, place, release_placement
from tensorai.scheduler.core.requests import pod_demand, total_gpu_milli
from tensorai.scheduler.core.types import ClusterArrays, ContainerDemand, NodeSpec, Placement, PodDemand

ARRAYS = ("gpu_free_milli", "gpu_free_memory_mib", "node_cpu_free_milli", "node_memory_free_mib", "gpu_exclusive")


def container(name: str, milli: int | None = None, cpu: str | None = None, **extra) -> dict:
    limits = {"tensor.ai/vgpu-milli": str(milli)} if milli is not None else {}
    requests = {"cpu": cpu} if cpu is not None else {}
    return {"name": name, "resources": {"limits": limits, "requests": requests}, **extra}


def pod(init: list[dict], app: list[dict]) -> PodDemand:
    return pod_demand({"metadata": {"name": "p", "namespace": "ns", "uid": "u"},
                       "spec": {"initContainers": init, "containers": app}})


def node(gpus: int, free: tuple[int, ...] | None = None) -> ClusterArrays:
    cluster = cluster_from_nodes([NodeSpec("n0", 64000, 65536, gpus, "A100", gpu_memory_mib=16384)])
    if free is not None:
        cluster.gpu_free_milli[0, :gpus] = free
    return cluster


def slots_by_container(placement: Placement) -> dict[str, list[int]]:
    slots: dict[str, list[int]] = {}
    for choice in placement.choices:
        slots.setdefault(choice.container, []).append(choice.gpu_slot)
    return slots


def snapshot(cluster: ClusterArrays) -> dict[str, np.ndarray]:
    return {name: getattr(cluster, name).copy() for name in ARRAYS}


def test_init_500_before_app_250_shares_the_apps_gpu_and_counts_500_while_running():
    cluster = node(2)
    demand = pod([container("warm", 500)], [container("app", 250)])
    placement = choose_placement(cluster, demand, "fgd", 0)
    slots = slots_by_container(placement)
    assert slots["warm"] == slots["app"]  # the Assignment still lists both containers, on one GPU
    apply_placement(cluster, demand, placement)
    gpu = slots["app"][0]
    assert cluster.gpu_free_milli[0, gpu] == 500  # max(init, app), not the app's 250
    assert cluster.gpu_free_memory_mib[0, gpu] == 16384 - 8192
    assert int(cluster.gpu_free_milli[0, 1 - gpu]) == 1000
    assert total_gpu_milli(demand) == 500


def test_an_init_container_on_a_gpu_that_cannot_hold_max_of_init_and_app_is_infeasible():
    demand = pod([container("warm", 500)], [container("app", 250)])
    feasible, reasons = node_feasibility(node(1, free=(400,)), demand)
    assert not feasible[0]
    assert reasons[0] == (REASON_TEXT[INIT_GPU], True)  # the app alone would fit; evictions could fix it
    assert node_feasibility(node(1, free=(400,)), pod([], [container("app", 250)]))[0][0]


def test_the_app_moves_to_a_gpu_that_holds_its_init_container_too():
    cluster = node(2, free=(300, 600))  # the app alone would take the tighter GPU 0
    demand = pod([container("warm", 500)], [container("app", 250)])
    for policy in ("fgd", "tensorai", "bestfit", "binpack", "spread"):
        placement = choose_placement(cluster, demand, policy, 0)
        assert slots_by_container(placement) == {"warm": [1], "app": [1]}, policy
    apply_placement(cluster, demand, placement)
    assert cluster.gpu_free_milli[0, :2].tolist() == [300, 100]


def test_a_sidecar_keeps_its_own_share_beside_the_app():
    sidecar = container("proxy", 250, cpu="1", restartPolicy="Always")
    demand = pod([sidecar, container("setup", cpu="2")], [container("app", 250, cpu="1500m")])
    proxy = next(c for c in demand.containers if c.name == "proxy")
    assert proxy.sidecar and not proxy.init
    # Kubernetes' rule: max(app + sidecars = 2.5, setup + sidecars before it = 3) CPUs
    assert demand.cpu_milli == 3000
    cluster = node(1)
    apply_placement(cluster, demand, choose_placement(cluster, demand, "fgd", 0))
    assert cluster.gpu_free_milli[0, 0] == 500  # sidecar and app both stay
    assert not node_feasibility(node(1, free=(400,)), demand)[0][0]


def test_init_containers_chain_onto_the_next_container_and_later_ones_draw_on_the_leftovers_there():
    cluster = node(2)
    demand = pod([container("fetch", 300), container("compile", 700)], [container("a", 500), container("b", 200)])
    placement = choose_placement(cluster, demand, "fgd", 0)
    slots = slots_by_container(placement)
    # kubelet: compile reuses fetch's 300 IDs, a takes 500 of the 700, b the 200 left: all one GPU
    assert slots["fetch"] == slots["compile"] == slots["a"] == slots["b"]
    apply_placement(cluster, demand, placement)
    assert int(cluster.gpu_free_milli[0, :2].sum()) == 2000 - 700
    after_drain = pod([container("fetch", 300)], [container("a", 300), container("b", 900)])
    slots = slots_by_container(choose_placement(node(2), after_drain, "fgd", 0))
    assert slots["fetch"] == slots["a"] != slots["b"]  # the pool is empty after a: b goes where it fits


def test_apply_then_release_restores_the_arrays():
    cluster = node(2, free=(1000, 700))
    before = snapshot(cluster)
    demand = pod([container("warm", 900), container("proxy", 100, restartPolicy="Always")], [container("app", 300)])
    placement = choose_placement(cluster, demand, "tensorai", 0)
    apply_placement(cluster, demand, placement)
    assert len({slot for slots in slots_by_container(placement).values() for slot in slots}) == 1
    # proxy reuses 100 of warm's 900 IDs, app 300 of the 800 left: the pod holds 900 on GPU 0
    assert cluster.gpu_free_milli[0, :2].tolist() == [100, 700]
    release_placement(cluster, demand, placement)
    for name, array in before.items():
        assert np.array_equal(getattr(cluster, name), array), name


def test_held_sequence_follows_kubelets_reuse_pool():
    assert held_sequence([(True, 500), (False, 250)]) == 500
    assert held_sequence([(True, 250), (False, 500)]) == 500  # the app grows on the init container's GPU
    assert held_sequence([(True, 500), (False, 250), (True, 300), (False, 250)]) == 550  # a sidecar took 250
    assert held_sequence([(False, 250), (False, 250)]) == 500
    assert anchors([ContainerDemand("i1", 100, 1, init=True), ContainerDemand("s", 100, 1),
                    ContainerDemand("i2", 100, 1, init=True), ContainerDemand("a", 100, 1)]) == [1, None, 3, None]


# --- property: a kubelet replay with real device IDs never runs out, and the arrays match it ---------------


def kubelet_replay(initial: ClusterArrays, placed: list[tuple[PodDemand, Placement]]) -> dict[tuple[int, int], int]:
    """Free IDs per (node, GPU) after admitting every pod as kubelet does; asserts no ID is handed out twice."""
    free: dict[tuple[int, int], set[int]] = {}
    for node_index in range(len(initial.node_names)):
        for slot in range(int(initial.gpu_count[node_index])):
            free[(node_index, slot)] = set(range(int(initial.gpu_free_milli[node_index, slot])))
    for demand, placement in placed:
        pool: set[tuple[int, int, int]] = set()
        for spec in demand.containers:
            taken: set[tuple[int, int, int]] = set()
            pool_size, reused_total = len(pool), 0
            for choice in (c for c in placement.choices if c.container == spec.name):
                key = (choice.node_index, choice.gpu_slot)
                reused = sorted(device for device in pool if device[:2] == key)[:choice.milli]
                reused_total += len(reused)
                fresh_count = choice.milli - len(reused)
                assert len(free[key]) >= fresh_count, f"GPU {key} over-committed by {demand.name}"
                fresh = sorted(free[key])[:fresh_count]
                free[key] -= set(fresh)
                taken |= set(reused) | {(*key, device) for device in fresh}
            # kubelet takes pool IDs before any free one: the placement must put them where it will
            assert reused_total == min(pool_size, spec.milli * spec.gpu_count), f"{spec.name} misses the pool"
            pool = pool | taken if spec.init else pool - taken
    return {key: len(ids) for key, ids in free.items()}


def random_container(draw, name: str, init: bool, sidecar: bool = False) -> ContainerDemand:
    if draw(st.booleans()):
        return ContainerDemand(name, draw(st.integers(1, 10)) * 100, 1, None, init, sidecar)
    return ContainerDemand(name, 1000, draw(st.integers(1, 2)), None, init, sidecar)


@st.composite
def pods_with_init_containers(draw) -> PodDemand:
    containers = [random_container(draw, f"i{k}", True) for k in range(draw(st.integers(0, 2)))]
    if draw(st.booleans()):
        containers.insert(draw(st.integers(0, len(containers))), random_container(draw, "side", False, True))
    containers += [random_container(draw, f"a{k}", False) for k in range(draw(st.integers(0, 2)))]
    if not containers:
        containers = [random_container(draw, "a0", False)]
    return PodDemand("ns", "p", "u", tuple(containers), cpu_milli=1000)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(pods_with_init_containers(), st.sampled_from(["fgd", "tensorai", "bestfit", "spread"])),
                min_size=1, max_size=10),
       st.lists(st.integers(0, 1000), min_size=4, max_size=4))
def test_pods_with_init_containers_never_over_commit_and_release_restores_the_arrays(sequence, used):
    cluster = cluster_from_nodes([NodeSpec("n0", 64000, 65536, 4, "A100"), NodeSpec("n1", 64000, 65536, 2, "A100")])
    cluster.gpu_free_milli[0, :4] = [1000 - milli for milli in used]
    initial = copy_cluster(cluster)
    before = snapshot(cluster)
    placed: list[tuple[PodDemand, Placement]] = []
    for index, (template, policy) in enumerate(sequence):
        demand = PodDemand("ns", f"p{index}", f"u{index}", template.containers, template.cpu_milli)
        placement = place(cluster, demand, policy)
        if placement is None:
            continue
        slots = slots_by_container(placement)
        for spec, anchor in zip(demand.containers, anchors(demand.containers), strict=True):
            if anchor is not None:  # on the GPUs of the container that reuses its IDs (all of them, or a superset)
                theirs, mine = slots[demand.containers[anchor].name], slots[spec.name]
                assert set(theirs[:len(mine)]) <= set(mine) or set(mine) <= set(theirs)
        apply_placement(cluster, demand, placement)
        placed.append((demand, placement))
        assert (cluster.gpu_free_milli[cluster.gpu_healthy] >= 0).all()
        assert (cluster.gpu_free_memory_mib >= 0).all()
        replayed = kubelet_replay(initial, placed)
        for (node_index, slot), free_ids in replayed.items():
            assert cluster.gpu_free_milli[node_index, slot] == free_ids
    for demand, placement in reversed(placed):
        release_placement(cluster, demand, placement)
    for name, array in before.items():
        assert np.array_equal(getattr(cluster, name), array), name


def test_a_lone_share_that_does_not_fit_is_blamed_on_gpu_capacity_not_on_init_containers():
    """Without init containers a full node's reason is GPU capacity (it once said "init container")."""
    from tensorai.scheduler.core.fit import GPU

    feasible, reasons = node_feasibility(node(1, free=(100,)), pod([], [container("app", 250)]))
    assert not feasible[0]
    assert reasons[0] == (REASON_TEXT[GPU], True)
